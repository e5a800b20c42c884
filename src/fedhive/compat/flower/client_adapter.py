"""A Flower ``ClientApp`` as a fedhive app: ``init``, ``train`` and ``evaluate`` hooks that speak to
it in Flower messages, exactly as Flower's server side would.

Both styles go through the Flower ``ClientApp`` itself (``app(message, context)``), so its mods
and its legacy ``client_fn`` handling run as under Flower:

- Message API (``@app.train()``, ``@app.evaluate()``): a ``RecordDict`` with the model as an
  ``ArrayRecord`` and the round's ``ConfigRecord`` (with ``server-round``), under the strategy's
  own record keys; the reply's ``MetricRecord`` must carry ``num-examples`` (the strategy's
  ``weighted_by_key``);
- legacy (``ClientApp(client_fn=...)`` returning a ``NumPyClient`` or ``Client``): ``FitIns`` /
  ``EvaluateIns`` / ``GetParametersIns`` records made by Flower's own ``recorddict_compat``.

Fidelity: each fedhive client keeps ONE Flower ``Context`` for the whole run (a session), so
``context.state`` lasts across rounds and, kept in the client's fedhive ``ctx.state`` after every
call (``state``), across a restart of the client process; its ``node_config`` is the site's settings plus
``partition-id`` / ``num-partitions`` (from fedhive's ``partition_id`` / ``num_partitions``); its
``run_config`` is the Flower project's ``[tool.flwr.app.config]`` with the run's overrides.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from typing import Any

from flwr.app import DEFAULT_TTL, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp as FlowerClientApp
from flwr.common import EvaluateIns, FitIns, GetParametersIns
from flwr.common.constant import SUPERLINK_NODE_ID, MessageTypeLegacy
from flwr.compat.common import recorddict_compat as legacy

from fedhive.app.client_app import ClientApp
from fedhive.app.contract import Context as FedhiveContext
from fedhive.app.contract import EvalResult, TrainResult
from fedhive.compat.flower.records import (
    from_array_record,
    from_parameters,
    metrics_of,
    scalar_metrics,
    to_array_record,
    to_parameters,
)
from fedhive.compat.flower.server_capture import LEGACY, ServerPlan
from fedhive.compat.flower.state import STATE_KEY, load_state, save_state
from fedhive.core.params import Params
from fedhive.errors import AppError

# fedhive's node settings that Flower apps know under their own names (Flower's simulation sets
# ``partition-id`` and ``num-partitions`` in every node_config).
_NODE_NAMES = {"partition_id": "partition-id", "num_partitions": "num-partitions"}


class FlowerClientAdapter:
    """One Flower ``ClientApp`` and the Flower ``Context`` of each fedhive client that runs it."""

    def __init__(self, flower_app: FlowerClientApp, plan: ServerPlan, run_config_keys: list[str], name: str) -> None:
        self.flower_app = flower_app
        self.plan = plan
        self.name = name
        self._run_config_keys = list(run_config_keys)
        # client id -> (its session, its Context, the state text last saved into its ctx.state)
        self._contexts: dict[str, tuple[str, Context, object]] = {}
        self._round = 0  # the latest round this process trained: evaluation follows it

    def fedhive_app(self) -> ClientApp:
        return ClientApp(init=self.init, train=self.train, evaluate=self.evaluate)

    # -- the fedhive hooks ---------------------------------------------------------------------

    def init(self, weights: Params, config: Mapping[str, Any], ctx: FedhiveContext) -> Params:
        if self.plan.initial is not None:
            return self.plan.initial
        if self.plan.style != LEGACY:
            raise AppError(f"{self.name}: the ServerApp gave Strategy.start no initial arrays")
        # What Flower's legacy server does without initial_parameters: ask one client for its own.
        content = legacy.getparametersins_to_recorddict(GetParametersIns(config={}))
        reply = self._exchange(ctx, config, MessageTypeLegacy.GET_PARAMETERS, content, 0)
        params = from_parameters(legacy.recorddict_to_getparametersres(reply, keep_input=False).parameters)
        if not params:
            raise AppError(f"{self.name}: get_parameters gave no arrays")
        return params

    def train(self, weights: Params, config: Mapping[str, Any], ctx: FedhiveContext) -> TrainResult:
        server_round = int(config["round"])
        self._round = max(self._round, server_round)
        round_config = self._with_proximal_mu(self.plan.round_config("train", server_round), config)
        where = f"{self.name} train (round {server_round})"
        if self.plan.style == LEGACY:
            content = legacy.fitins_to_recorddict(FitIns(to_parameters(weights), round_config), keep_input=True)
            reply = self._exchange(ctx, config, MessageType.TRAIN, content, server_round)
            fit = legacy.recorddict_to_fitres(reply, keep_input=False)
            params = from_parameters(fit.parameters)
            if not params:
                raise AppError(f"{where}: the reply has no arrays")
            return TrainResult(params, fit.num_examples, scalar_metrics(fit.metrics, where))
        reply = self._exchange(ctx, config, MessageType.TRAIN, self._content(weights, round_config), server_round)
        arrays = list(reply.array_records.values())
        if len(arrays) != 1 or not arrays[0]:
            raise AppError(f"{where}: the reply must hold one ArrayRecord with the model, it holds {len(arrays)}")
        count, metrics = self._count_and_metrics(reply, where)
        return TrainResult(from_array_record(arrays[0]), count, metrics)

    def evaluate(self, weights: Params, config: Mapping[str, Any], ctx: FedhiveContext) -> EvalResult:
        server_round = self._round
        round_config = self.plan.round_config("evaluate", server_round)
        where = f"{self.name} evaluate (round {server_round})"
        if self.plan.style == LEGACY:
            content = legacy.evaluateins_to_recorddict(
                EvaluateIns(to_parameters(weights), round_config), keep_input=True
            )
            reply = self._exchange(ctx, config, MessageType.EVALUATE, content, server_round)
            res = legacy.recorddict_to_evaluateres(reply)
            return EvalResult(res.num_examples, {"loss": float(res.loss), **scalar_metrics(res.metrics, where)})
        reply = self._exchange(ctx, config, MessageType.EVALUATE, self._content(weights, round_config), server_round)
        count, metrics = self._count_and_metrics(reply, where)
        return EvalResult(count, metrics)

    # -- Flower messages -----------------------------------------------------------------------

    def _exchange(
        self, ctx: FedhiveContext, config: Mapping[str, Any], kind: str, content: RecordDict, server_round: int
    ) -> RecordDict:
        """Send ``content`` to the Flower app as a message of ``kind``; its reply's content."""
        run = str(config.get("session_id", ""))
        context = self._context(ctx, config, run)
        # The message as a SuperNode hands it to its ClientApp: from the SuperLink, with an id.
        metadata = Metadata(
            run_id=context.run_id,
            message_id=uuid.uuid4().hex,
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=context.node_id,
            reply_to_message_id="",
            group_id=str(server_round),
            created_at=time.time(),
            ttl=DEFAULT_TTL,
            message_type=kind,
        )
        message = make_message(metadata, content)
        reply = self.flower_app(message, context)
        save_state(context.state, run, ctx.state)  # fedhive's state store writes it after this call
        self._contexts[ctx.client_id] = (run, context, ctx.state[STATE_KEY])
        if not isinstance(reply, Message):
            raise AppError(f"{self.name} {kind} returned {type(reply).__name__}, not a flwr Message")
        if reply.has_error():
            raise AppError(f"{self.name} {kind} replied with an error: {reply.error.reason}")
        return reply.content

    def _content(self, weights: Params, round_config: Mapping[str, Any]) -> RecordDict:
        arrays_key = self.plan.attr("arrayrecord_key", "arrays")
        config_key = self.plan.attr("configrecord_key", "config")
        return RecordDict({arrays_key: to_array_record(weights), config_key: ConfigRecord(dict(round_config))})

    def _count_and_metrics(self, reply: RecordDict, where: str) -> tuple[int, dict[str, float]]:
        key = self.plan.attr("weighted_by_key", "num-examples")
        records: list[MetricRecord] = list(reply.metric_records.values())
        counts = [r[key] for r in records if key in r]
        if not counts:
            raise AppError(f"{where}: the reply has no MetricRecord with {key!r} (the client's weight)")
        count = counts[0]
        if isinstance(count, list) or count != int(count) or count < 0:
            raise AppError(f"{where}: {key!r} must be a whole number >= 0, got {count!r}")
        return int(count), metrics_of(records, skip=key)

    def _with_proximal_mu(self, round_config: dict[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
        # fedhive's fedprox sets the round's proximal_mu; Flower's FedProx sends it under its own key.
        mu = config.get("proximal_mu")
        if mu:
            round_config["proximal_mu" if self.plan.style == LEGACY else "proximal-mu"] = float(mu)
        return round_config

    def _context(self, ctx: FedhiveContext, config: Mapping[str, Any], run: str) -> Context:
        """This client's one Flower ``Context`` of session ``run``: kept from call to call while
        ``ctx.state`` holds what it last saved there; otherwise (first use, a restarted process, a
        state handed over by another process) made with the state saved in ``ctx.state``."""
        known = self._contexts.get(ctx.client_id)
        if known is not None and known[0] == run and ctx.state.get(STATE_KEY) is known[2]:
            return known[1]
        node_config = dict(ctx.node)
        for ours, theirs in _NODE_NAMES.items():
            if ours in node_config and theirs not in node_config:
                node_config[theirs] = node_config[ours]
        run_config = {key: config[key] for key in self._run_config_keys if key in config}
        return Context(
            run_id=_stable_int(run),
            node_id=_stable_int(ctx.client_id),
            node_config=node_config,
            state=load_state(ctx.state, run),
            run_config=run_config,
        )


def _stable_int(text: str) -> int:
    """A positive 63-bit id from ``text``: the same client gets the same Flower node id every run."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1
