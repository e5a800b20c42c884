"""A decentralised session run by ``fedhive serve``: the sites are the peers; the server watches.

There is no central aggregation: the server gives each selected agent its order (the session's
settings, its peer id, the session's peer ids, the federation key sealed for it:
``runtime.peer_orders``), and the agents' peers meet on the broker and train among themselves. What
the server learns comes from the agents on their own signed channels: one report per round each
(the committed model's digest, the round's peers, the agent's own training figures), a last one
when done, or why they failed; and their heartbeats.

What is recorded: the session RUNNING once the orders are out; each round once every peer still
in the session has reported it (metrics weighted by examples, ``digest_agreement``: the share of
reports naming the most common digest, ``peers``: who took part), each site's figures as its
result row; COMPLETED when every peer still in the session is done with the same model, FAILED with
the reason otherwise. No wait is unbounded: a peer unheard for the heartbeat timeout is gone (the
others go on without it, as their peers do), and a session with no report at all for
``stall_after_s`` (after the peers' discovery time) fails, its agents told to stop. The same facts
go to the session's observers, an MLflow tracker among them (``peer_session_facts``). When the
peers end with one model, the agents whose peers finished are asked for it, and the first answer
whose recomputed digest is the agreed one becomes the session's model in the registry, as a star
session's (``peer_session_model``); the session is COMPLETED with or without it.

After a restart of the server (``resumed``) the session is watched again, not started again: the
peers never needed the server, so those still running go on. Each agent is asked about its peer
(``peer_orders.resume_message``; its peer id is the one kept in the session's config,
``data["peer_ids"]``): a running or finished one repeats its reports, and rounds not yet recorded
are recorded from them; an agent with no such peer says so and is out, with its reason. The
server never holds the model (or the federation key) of a decentralised session, so a session whose
peers are all gone cannot go on: it fails, saying so and naming the last round recorded.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field

from fedhive.core.bodies import ErrorBody, StopBody, parse_body
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.errors import FedhiveError, ProtocolError
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.hub import DECENTRALISED, Hub
from fedhive.runtime.peer_model_upload import is_model_answer
from fedhive.runtime.peer_orders import DONE, PeerOrder, PeerProgress, resume_message, seal_key
from fedhive.runtime.peer_rounds import new_peer_id
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.peer_session_facts import PeerSessionFacts
from fedhive.service.peer_session_model import ModelCollection, SessionModelKeeper, refuse_unasked
from fedhive.service.service_nodes import SecretOf
from fedhive.storage import sessions_repo, users_repo
from fedhive.storage.database import Database
from fedhive.storage.models import ResultStatus, SessionStatus
from fedhive.transports.base import TransportClosed

log = logging.getLogger("fedhive.sessions")
_TICK_S = 1.0


@dataclass
class _Site:
    peer_id: str
    heard: float
    state: str = "running"  # running, done, failed, gone
    reason: str = ""
    reports: dict[int, PeerProgress] = field(default_factory=dict)


class PeerSession:
    def __init__(
        self,
        db: Database,
        hub: Hub,
        config: SessionConfig,
        peers: list[str],
        *,
        site_secret: SecretOf,
        heartbeat_timeout_s: float = 20.0,
        stall_after_s: float | None = None,
        beat_s: float = 1.0,
        peer_timeout_s: float = 5.0,
        resumed: bool = False,
        keeper: SessionModelKeeper | None = None,
    ) -> None:
        self.db = db
        self.hub = hub
        self.config = config
        self.site_secret = site_secret
        self.heartbeat_timeout_s = heartbeat_timeout_s
        # A round with its rechecks: past that with no report, nobody is making progress. The
        # first report may take the peers' discovery as well.
        c = config
        self.stall_after_s = stall_after_s or c.round_timeout_s * (c.max_round_retries + 2) + peer_timeout_s
        self.beat_s, self.peer_timeout_s = beat_s, peer_timeout_s
        now = time.monotonic()
        kept = config.data.get("peer_ids")
        peer_ids = {str(a): str(p) for a, p in kept.items()} if isinstance(kept, dict) else {}
        self.sites = {p: _Site(peer_ids.get(p) or new_peer_id(), now) for p in sorted(peers)}
        self.resumed = resumed
        self.port = hub.open_session(config.session_id, peers, topology=DECENTRALISED)
        self._recorded = 0
        self._last_round_at = now
        self._last_progress = now + c.registration_timeout_s
        self.facts = PeerSessionFacts(config.session_id)  # its bus: where observers follow the session
        # Where the model the peers agree on is kept (None: it stays with the peers)
        self.keeper = keeper
        self.model: Params | None = None
        self._figures: dict[str, float] = {}  # the last recorded round's, the model version's metrics

    @property
    def session_id(self) -> str:
        return self.config.session_id

    async def run(self) -> None:
        try:
            if self.resumed:
                self._recorded = await asyncio.to_thread(self._rounds_recorded)
                self.facts.started(self.config, list(self.sites), start_round=self._recorded + 1)
                await self.port.send_many([(agent, resume_message(self.session_id)) for agent in self.sites])
            else:
                await self._give_orders()
                await asyncio.to_thread(self._write_status, SessionStatus.RUNNING, None)
                self.facts.started(self.config, list(self.sites))
            outcome = await self._watch()
            self.facts.ended(self._recorded, outcome, self.model)
        finally:
            self.hub.release(self.session_id)
            self.facts.stop()
        if outcome is not None:  # the session failed: its agents stop their peers
            await self._stop_agents(outcome)
        await self.facts.drained()

    async def _give_orders(self) -> None:
        key = secrets.token_bytes(32)  # the session's federation key: only its agents get it, sealed
        peer_ids = sorted(s.peer_id for s in self.sites.values())
        orders = []
        for agent, site in self.sites.items():
            secret = await asyncio.to_thread(self.site_secret, agent)
            if secret is None:
                site.state, site.reason = "failed", "no secret on record (revoked?)"
                continue
            sealed = seal_key(key, secret, session_id=self.session_id, site_id=agent)
            order = PeerOrder(self.config, site.peer_id, peer_ids, sealed, self.beat_s, self.peer_timeout_s)
            orders.append((agent, order.message()))
        for (agent, _), error in zip(orders, await self.port.send_many(orders), strict=True):
            if error is not None:
                site = self.sites[agent]
                site.state, site.reason = "failed", f"could not be reached: {error}"

    async def _watch(self) -> str | None:
        """Until every peer is done, failed or gone; returns why the session failed, or None."""
        while True:
            try:
                async with asyncio.timeout(_TICK_S):
                    msg = await self.port.recv()
                self._on_message(msg)
            except TimeoutError:
                pass
            except TransportClosed:
                return "the server stopped watching"
            now = time.monotonic()
            for agent, site in self.sites.items():
                if site.state == "running" and now - site.heard > self.heartbeat_timeout_s:
                    site.state, site.reason = "gone", f"unheard for {self.heartbeat_timeout_s:.0f} s"
                    log.warning("session %s: peer %s is gone (%s)", self.session_id, agent, site.reason)
            await self._record_rounds()
            if all(s.state != "running" for s in self.sites.values()):
                return await self._end()
            if now - self._last_progress > self.stall_after_s:
                reason = f"no peer reported progress for {self.stall_after_s:.0f} s"
                await asyncio.to_thread(self._write_status, SessionStatus.FAILED, reason)
                return reason

    def _on_message(self, msg: Message) -> None:
        site = self.sites.get(msg.sender)
        if site is None and is_model_answer(msg):
            log.warning("session %s: refused the model from %s: not one of its peers", self.session_id, msg.sender)
            return
        if site is None:
            log.info("session %s: ignored %s from %s, not one of its peers", self.session_id, msg.kind, msg.sender)
            return
        if site.state in ("running", "done"):
            site.heard = time.monotonic()
        if is_model_answer(msg):
            refuse_unasked(self.session_id, msg)
            return
        try:
            if msg.kind is Kind.PEER_UPDATE and site.state == "running":
                report = PeerProgress.read(msg)
                site.reports[report.round] = report
                self._last_progress = time.monotonic()
                if report.type == DONE:
                    site.state = "done"
            elif msg.kind is Kind.ERROR and site.state == "running":
                site.state, site.reason = "failed", parse_body(ErrorBody, msg).reason
                log.warning("session %s: peer %s failed: %s", self.session_id, msg.sender, site.reason)
        except (ProtocolError, FedhiveError) as exc:
            log.warning("session %s: rejected %s from %s: %s", self.session_id, msg.kind, msg.sender, exc)

    async def _record_rounds(self, *, final: bool = False) -> None:
        """Each round once every peer still in the session has reported it (at the end: whatever came)."""
        while self._recorded < self.config.rounds:
            rnd = self._recorded + 1
            reports = {a: s.reports[rnd] for a, s in self.sites.items() if rnd in s.reports}
            waiting = [a for a, s in self.sites.items() if s.state in ("running", "done") and rnd not in s.reports]
            if not reports or (waiting and not final):
                return
            recorded = await asyncio.to_thread(self._write_round, rnd, reports)
            self._recorded = rnd
            self.facts.round(rnd, reports, recorded, len(self.sites))

    async def _end(self) -> str | None:
        await self._record_rounds(final=True)
        done = {a: s for a, s in self.sites.items() if s.state == "done"}
        last = {s.reports[max(s.reports)].digest for s in done.values()}
        if done and len(last) == 1:
            digest = next(iter(last))
            reason = f"completed all {self.config.rounds} rounds among {len(done)} peers (model {digest[:12]})"
            if self.keeper is None:
                await asyncio.to_thread(self._write_status, SessionStatus.COMPLETED, reason)
                return None
            rnd = max(max(s.reports) for s in done.values())
            collection = ModelCollection(
                self.port, self.session_id, rnd, digest, sites=set(self.sites), max_bytes=self.config.max_update_bytes
            )
            self.model = await collection.collect(sorted(done), self.keeper.timeout_s)
            if self.model is None:
                reason += f"; no peer handed over the model, so the registry holds none ({collection.why_none()})"
            await asyncio.to_thread(self.keeper.complete, self.session_id, self.model, self._figures, reason)
            return None
        if done:
            reason = f"the peers ended with {len(last)} different models"
        else:
            why = sorted({f"{a}: {s.reason}" for a, s in self.sites.items() if s.reason})
            reason = "no peer finished; " + "; ".join(why) if why else "no peer finished"
            if self.resumed:
                reason = (
                    f"the server restarted after round {self._recorded} and no peer went on: the model of a "
                    f"decentralised session is held by its peers only, so it cannot resume ({reason})"
                )
        await asyncio.to_thread(self._write_status, SessionStatus.FAILED, reason)
        return reason

    async def _stop_agents(self, reason: str) -> None:
        body = StopBody.model_construct(reason=reason[:1000]).to_body()
        stop = make(Kind.STOP, COORDINATOR_ID, session_id=self.session_id, body=body)
        await self.hub.transport.send_many([(agent, stop) for agent in self.sites])

    # -- the database (in worker threads) -------------------------------------------------------------
    def _write_round(self, rnd: int, reports: dict[str, PeerProgress]) -> dict[str, object]:
        digests = Counter(r.digest for r in reports.values())
        total = sum(r.num_examples for r in reports.values())
        names = sorted({k for r in reports.values() for k in r.metrics})
        weighted = {
            k: sum(r.num_examples * r.metrics.get(k, 0.0) for r in reports.values()) / total for k in names if total
        }
        members = max((len(r.members) for r in reports.values()), default=0)
        now = time.monotonic()
        metrics = {
            **weighted,
            "train": weighted,
            "digest_agreement": digests.most_common(1)[0][1] / len(reports),
            "peers": members,
            "selected": len(self.sites),
            "missing": sorted(set(self.sites) - reports.keys()),
        }
        with self.db.session() as s:
            for agent, r in sorted(reports.items()):
                sessions_repo.record_client_result(
                    s, self.session_id, rnd, agent, status=ResultStatus.ACCEPTED, num_examples=r.num_examples,
                    metrics=r.metrics,
                )  # fmt: skip
            sessions_repo.record_round(
                s, self.session_id, rnd, metrics=metrics, num_updates=members, duration_s=now - self._last_round_at
            )
        self._last_round_at = now
        self._figures = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
        return metrics

    def _rounds_recorded(self) -> int:
        with self.db.session(read_only=True) as s:
            return max((r.round for r in sessions_repo.list_rounds(s, self.session_id)), default=0)

    def _write_status(self, status: SessionStatus, reason: str | None) -> None:
        with self.db.session() as s:
            sessions_repo.set_session_status(s, self.session_id, status, reason=reason[:2000] if reason else None)
            if status is not SessionStatus.RUNNING:
                users_repo.release_clients(s, self.session_id)
