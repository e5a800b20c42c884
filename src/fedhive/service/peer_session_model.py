"""The model a decentralised session's peers agreed on, fetched from them and kept as the session's.

The server never trains such a session, so at its end it asks the agents whose peers finished for
the last round's model (``runtime.peer_model_upload``): all of them at once, the first answer that
checks out wins. An answer is taken only from a peer of this session that was asked, only for the
round asked, within the session's update limit, safetensors only, and only if its recomputed digest
is the one the peers agreed on; anything else is refused with one warning line naming the sender and
why, and the wait goes on until ``timeout_s`` or until every agent asked has said it cannot.

The model is then kept as a star session's final model is (``SessionRecorder``): its safetensors in
the artifact store (content-addressed: the same key), a new version of the owner's model
``session-<id>`` with the last round's figures, the session's final model pointing at it (the
dashboard's download link), in the same unit as the COMPLETED status. The session's observers get it
with ``SessionCompleted`` (an MLflow tracker logs and registers it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fedhive.core import codec
from fedhive.core.bodies import ErrorBody, parse_body
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import Params
from fedhive.errors import FedhiveError
from fedhive.runtime.peer_model_upload import is_model_answer, model_request, read_model
from fedhive.storage import models_repo, sessions_repo, users_repo
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database
from fedhive.storage.models import SessionStatus
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.sessions")


@dataclass
class SessionModelKeeper:
    """Where a decentralised session's model goes: the owner's registry, as a star session's does."""

    db: Database
    artifacts: ArtifactStore
    owner_id: int | None
    model_name: str
    model_spec: str
    timeout_s: float = 60.0  # for the first answer that checks out

    def complete(self, session_id: str, params: Params | None, metrics: dict[str, float], reason: str) -> None:
        """COMPLETED, with ``params`` as the session's final model when there is one (blocking)."""
        ref = self.artifacts.put(codec.encode(params)) if params is not None else None
        with self.db.session() as s:
            if ref is not None and params is not None and self.owner_id is not None:
                version = models_repo.add_model_version(
                    s, self.owner_id, self.model_name, artifact_ref=ref, spec={"tensors": params.spec.to_json()},
                    model_spec=self.model_spec, session_id=session_id, metrics=metrics, create=True,
                )  # fmt: skip
                sessions_repo.set_final_model(s, session_id, version.id)
            sessions_repo.set_session_status(s, session_id, SessionStatus.COMPLETED, reason=reason[:2000])
            users_repo.release_clients(s, session_id)


class ModelCollection:
    """One ask for the agreed model of ``round`` (``digest``) to ``asked``, and the answers to it."""

    def __init__(
        self, port: Transport, session_id: str, round: int, digest: str, *, sites: set[str], max_bytes: int
    ) -> None:
        self.port, self.session_id, self.round, self.digest = port, session_id, round, digest
        self.sites, self.max_bytes = sites, max_bytes
        self.asked: set[str] = set()
        self.declined: dict[str, str] = {}

    async def collect(self, asked: list[str], timeout_s: float) -> Params | None:
        """The first answer that checks out, or None (every agent asked declined, or none in time)."""
        request = model_request(self.session_id, self.round, self.digest)
        for agent, error in zip(asked, await self.port.send_many([(a, request) for a in asked]), strict=True):
            if error is None:
                self.asked.add(agent)
            else:
                self.declined[agent] = f"could not be asked: {error}"
        deadline = time.monotonic() + timeout_s
        while self.asked - self.declined.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("session %s: no peer handed over its model within %.0f s", self.session_id, timeout_s)
                return None
            try:
                async with asyncio.timeout(left):
                    msg = await self.port.recv()
            except TimeoutError:
                continue
            params = await self.take(msg)
            if params is not None:
                return params
        log.warning("session %s: no peer handed over its model: %s", self.session_id, self.why_none())
        return None

    async def take(self, msg: Message) -> Params | None:
        """The model ``msg`` hands over if it is the agreed one from a peer asked; None otherwise."""
        if msg.kind is Kind.ERROR and msg.sender in self.asked:
            self.declined[msg.sender] = parse_body(ErrorBody, msg).reason
            return None
        if not is_model_answer(msg):
            return None
        try:
            if msg.sender not in self.sites:
                raise FedhiveError(f"{msg.sender} is not one of the session's peers")
            if msg.sender not in self.asked:
                raise FedhiveError(f"{msg.sender} was not asked for the model")
            params = await asyncio.to_thread(
                read_model, msg, round=self.round, digest=self.digest, max_bytes=self.max_bytes
            )
        except FedhiveError as exc:
            log.warning("session %s: refused the model from %s: %s", self.session_id, msg.sender, exc)
            return None
        log.info("session %s: model %s handed over by %s", self.session_id, self.digest[:12], msg.sender)
        return params

    def why_none(self) -> str:
        return "; ".join(f"{a}: {why}" for a, why in sorted(self.declined.items())) or "no answer"


def refuse_unasked(session_id: str, msg: Message) -> None:
    """A model handed over while none was asked for (mid-session, or a replay): refused, one line."""
    log.warning("session %s: refused the model from %s: none was asked for", session_id, msg.sender)
