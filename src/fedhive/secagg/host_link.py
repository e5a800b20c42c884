"""Secure aggregation in ``simulate``: the hosted clients' TRAIN answered with a secure sum.

With ``secure_aggregation`` on, the simulation's ``ClientHost`` talks to the coordinator through
this link. A TRAIN for the hosted clients does not reach the host: here every selected client
advertises keys and shares them, trains, quantises its change from the global model, masks it
and hands it to the secure aggregation server, which adds it to a running sum; the survivors'
shares then unmask the sum (``secagg.round``). The coordinator gets one ``partial`` (``sum``,
float64) holding that sum and the total weight, and names of the clients in it (and of those
that failed, with the reason); never a client's update, nor the host's plain sum of them. Every
other message (ENABLE, EVALUATE, STOP) passes through to the host unchanged.

Each client keeps its ``c`` key pair (which seals the shares between neighbours) for the session,
and its ``s`` key pair, so each pair agrees its secrets once (``secagg.channel``); the seeds and
keys each round uses are its own, derived or drawn anew.

``dropout`` simulates clients that vanish after sending their masked input: that share of each
round's clients (drawn from the session seed, round and attempt) sends no unmasking shares.

In this process the server's state machine runs beside the clients' (each message is a method
call); over a broker it belongs to the coordinator or combiner (``secagg.node_round``;
docs/secure_aggregation.md, "Over a broker").
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np

from fedhive.app.learner import FitConfig
from fedhive.core.bodies import Member, PartialBody, TrainBody, failure_rows, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import FedhiveError, ProtocolError
from fedhive.runtime.client import read_enable
from fedhive.runtime.client_host import HostedClient
from fedhive.runtime.downstream import COORDINATOR_ID
from fedhive.runtime.hosted import train_items
from fedhive.runtime.inline_executor import InlineExecutor, run_job
from fedhive.runtime.partials import partial_message
from fedhive.runtime.payloads import payload_params
from fedhive.runtime.session_config import SessionConfig
from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.pipeline import SecureSumPipeline, masking_threads
from fedhive.secagg.round import LocalSecureSum, round_context
from fedhive.secagg.server import session_graph_seed
from fedhive.secagg.settings import fixed_point, secure_weighting
from fedhive.strategies.base import Partial
from fedhive.strategies.registry import parse_strategy
from fedhive.strategies.screening import UpdateScreen, capped_examples
from fedhive.transports.base import Transport, TransportWrapper

log = logging.getLogger("fedhive.secagg")


class SecureHostLink(TransportWrapper):
    def __init__(
        self,
        inner: Transport,
        clients: Sequence[HostedClient],
        *,
        executor: Executor | None = None,
        coordinator_id: str = COORDINATOR_ID,
        dropout: float = 0.0,
        max_payload_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        super().__init__(inner)
        self._clients = {c.client_id: c for c in clients}
        self._executor = executor or InlineExecutor()
        self._coordinator = coordinator_id
        self._dropout = dropout
        self._max_payload = max_payload_bytes
        self._config: SessionConfig | None = None
        self._spec: ParamSpec | None = None
        self.clipped = 0  # coordinates clipped to [-secagg_clip, secagg_clip] so far (kept here, never sent)
        # Each client's ``c`` key pair for the session (``secagg.channel``): a new session, new ones.
        self._channels: dict[str, ChannelKeys] = {}
        self._graph_seed = session_graph_seed()  # the same neighbours each round (``server.session_graph_seed``)

    # -- the transport: TransportWrapper's, but for what arrives from the coordinator ---------
    async def recv(self) -> Message:
        while True:
            msg = await self.inner.recv()
            if msg.sender != self._coordinator:
                return msg
            if msg.kind is Kind.ENABLE:
                self._config, self._spec = read_enable(msg)
                self._channels, self._graph_seed = {}, session_graph_seed()
            elif msg.kind is Kind.TRAIN and self._config is not None and self._config.secure_aggregation:
                try:
                    await self._answer_train(msg)
                except FedhiveError as exc:  # the coordinator counts our clients missing
                    log.warning("%s: cannot act on TRAIN: %s", self.node_id, exc)
                continue
            return msg

    # -- one round ---------------------------------------------------------------------------------
    async def _answer_train(self, msg: Message) -> None:
        config, spec = self._config, self._spec
        assert config is not None and spec is not None
        env = msg.envelope
        body = parse_body(TrainBody, msg)
        if body.app_digest is not None and body.app_digest != config.app_digest:
            raise ProtocolError(
                f"TRAIN names app code {body.app_digest[:12]}, not the session's {config.app_digest[:12]}"
            )
        items = [(c, fit) for c, fit in train_items(body, env.round) if c in self._clients]
        params = payload_params(msg, spec, max_bytes=self._max_payload, what="global model")
        answer = await run_job(self._executor, self._secure_round, config, spec, env.round, body.attempt, params, items)
        await self.inner.send(self._coordinator, answer)

    def _secure_round(
        self,
        config: SessionConfig,
        spec: ParamSpec,
        round: int,
        attempt: int,
        params: Params,
        items: list[tuple[str, FitConfig]],
    ) -> Message:
        fp = fixed_point(config.secagg_clip, config.secagg_bits)
        weighted = secure_weighting(parse_strategy(config.strategy))
        screen = UpdateScreen(params, max_update_norm=config.max_update_norm, max_model_jump=config.max_model_jump)
        failures: list[tuple[str, str]] = []
        members: list[Member] = []
        build = functools.partial(
            LocalSecureSum,
            [c for c, _ in items],
            round_context(config.session_id, round, attempt),
            fp.vector_length(spec),
            config.secagg_threshold,
            f"round {round}",
            neighbours=config.secagg_neighbours,
            channels=self._channels,
            graph_seed=self._graph_seed,
        )
        secure = SecureSumPipeline(masking_threads(), build)  # the key steps begin while the first client trains
        try:
            for cid, fit in items:
                if (early := secure.failed_early()) is not None:
                    raise early
                update = self._train_one(cid, params, fit, spec, screen, failures)
                if update is None:
                    continue
                result_params, examples = update
                vector, clipped = fp.encode(result_params, params, examples if weighted else 1, examples)
                self.clipped += clipped
                secure.submit(cid, vector)
                members.append(Member(cid, examples, {}))
            total = secure.finish(lambda submitted: self._gone(config, round, attempt, submitted))
            sums, weight, examples_total = fp.decode(total, params)
        except SecAggError as exc:
            secure.abandon()
            log.warning("%s: %s", self.node_id, exc)
            failed = {c for c, _ in failures}
            failures += [(c, f"secure aggregation failed: {exc}") for c, _ in items if c not in failed]
            none = PartialBody.model_construct(mode="none", attempt=attempt, failures=failure_rows(failures))
            return make(Kind.PARTIAL, self.node_id, session_id=config.session_id, round=round, body=none.to_body())
        partial = Partial(sums, weight, examples_total, len(members), {}, 0.0)
        clients = [m.client_id for m in members]
        return partial_message(
            self.node_id, config.session_id, round, attempt, partial, clients,
            spec=spec, exact=True, members=members, failures=failures,
        )  # fmt: skip

    def _train_one(
        self,
        cid: str,
        params: Params,
        fit: FitConfig,
        spec: ParamSpec,
        screen: UpdateScreen,
        failures: list[tuple[str, str]],
    ) -> tuple[Params, int] | None:
        """One client's update and its capped example count, or None (its failure recorded)."""
        client = self._clients[cid]
        try:
            result = client.trainer.fit(params, fit)
            check_against_spec(result.params, spec, what=f"update from {cid}")
        except FedhiveError as exc:
            failures.append((cid, str(exc)))
            return None
        except Exception as exc:  # a bug in one client's trainer must not take the others down
            log.warning("%s: the trainer of %s raised", self.node_id, cid, exc_info=True)
            failures.append((cid, f"its trainer raised {type(exc).__name__}: {exc}"))
            return None
        _distance, refused = screen.refusal(result.params)  # the client screens itself: the server cannot
        if refused is not None:
            failures.append((cid, f"update {refused}"))
            return None
        config = self._config
        assert config is not None
        examples = capped_examples(
            result.num_examples,
            client.num_examples,
            factor=config.examples_cap_factor,
            ceiling=config.max_examples_per_client,
        )
        return result.params, examples

    def _gone(self, config: SessionConfig, round: int, attempt: int, submitted: list[str]) -> list[str]:
        k = int(self._dropout * len(submitted))
        if k == 0:
            return []
        rng = np.random.default_rng([config.seed, round, attempt, 0x5EC])
        return sorted(rng.choice(sorted(submitted), size=k, replace=False).tolist())
