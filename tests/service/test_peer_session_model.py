"""A decentralised session's final model reaches the server's registry, and only the agreed one.

End to end (one process, in-memory network, three site agents): the session ends COMPLETED with a
model version in its owner's registry whose stored safetensors have the digest the peers agreed on.
Then an attacker holding one valid site identity, against the server's ask (``ModelCollection``):
a model from a site not in the session, one the server did not ask for, one of another round, one
named by another digest, one whose bytes are not the agreed model, an oversized one, bytes that
are not safetensors, and another session's model moved to this one: each refused with one line,
and the agreed model sent afterwards is still taken. The same over RabbitMQ through ``fedhive
serve``'s REST API: ``test_peer_session_model_amqp``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest

from fedhive.core import codec
from fedhive.core.bodies import PeerUpdateBody
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import AuthenticationError, TransportError
from fedhive.runtime.peer_model_upload import FINAL_MODEL, model_answer, model_request
from fedhive.runtime.peer_rounds import params_digest
from fedhive.service.peer_session_model import ModelCollection
from fedhive.storage import models_repo, sessions_repo
from fedhive.storage.models import ModelVersionRow
from fedhive.transports.base import Transport
from service.test_serve_topologies import federation

SESSION = "session-a"
AGREED = Params({"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, dtype=np.float32)})
DIGEST = params_digest(AGREED)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_decentralised_session_ends_with_the_agreed_model_in_its_owners_registry(tmp_path: Path) -> None:
    async with federation(tmp_path) as fed:
        sid = await fed.manager.start(fed.request("decentralised"))
        status, reason = await fed.ended(sid)
        assert status == "COMPLETED", reason
        assert "no peer handed over" not in str(reason), reason

        def stored() -> tuple[str, str]:
            with fed.db.session(read_only=True) as s:
                row = sessions_repo.session_by_id(s, sid)
                assert row is not None and row.final_model_version_id is not None, "no final model"
                version = s.get(ModelVersionRow, row.final_model_version_id)
                assert version is not None and version.session_id == sid
                names = [m.name for m in models_repo.list_models(s, fed.owner)]
                assert f"session-{sid}" in names, names
                return version.artifact_ref, str(row.reason)

        ref, reason = await asyncio.to_thread(stored)
        artifacts = fed.manager.artifacts
        model = codec.decode(artifacts.get(ref), max_bytes=1 << 30, what="model")
    # The reason names the agreed digest (its first 12 hex digits): the stored model is that one.
    assert f"(model {params_digest(model)[:12]})" in reason, reason


class _Port(Transport):
    """The session's hub port as ``ModelCollection`` uses it: what it sends, and what it is handed."""

    def __init__(self) -> None:
        self.node_id = "coordinator"
        self.sent: list[tuple[str, Message]] = []
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()

    async def send_many(self, items: list[tuple[str, Message]]) -> list[TransportError | None]:  # type: ignore[override]
        self.sent += items
        return [None] * len(items)

    async def send(self, to: str, message: Message) -> None:
        self.sent.append((to, message))

    async def publish(self, topic: str, message: Message) -> None:
        raise NotImplementedError

    async def subscribe(self, topic: str) -> None:
        raise NotImplementedError

    async def recv(self) -> Message:
        return await self.inbox.get()

    async def close(self) -> None:
        pass


def _answer(
    site: str, params: Params | bytes | None, *, session: str = SESSION, rnd: int = 3, digest: str = DIGEST
) -> Message:
    """A model answer as ``site`` could craft it: ``params`` under the body naming ``digest``."""
    body = PeerUpdateBody.model_construct(type=FINAL_MODEL, digest=digest).to_body()
    return make(Kind.PEER_UPDATE, site, session_id=session, round=rnd, body=body, payload=params)


def _collection(port: _Port, max_bytes: int = 1 << 20) -> ModelCollection:
    return ModelCollection(port, SESSION, 3, DIGEST, sites={"site-1", "site-2"}, max_bytes=max_bytes)


async def _collect(
    caplog: pytest.LogCaptureFixture, attack: Message, *, max_bytes: int = 1 << 20
) -> tuple[Params | None, list[str]]:
    """The attack, then the honest answer: what is taken (the agreed model), and the refusals logged."""
    port = _Port()
    for msg in (attack, _answer("site-2", AGREED)):
        port.inbox.put_nowait(msg)
    with caplog.at_level(logging.WARNING, logger="fedhive.sessions"):
        taken = await _collection(port, max_bytes).collect(["site-2"], timeout_s=30)
    assert [to for to, _ in port.sent] == ["site-2"]  # only the finished peer asked
    refusals = [r.getMessage() for r in caplog.records if "refused the model" in r.getMessage()]
    return taken, refusals


ATTACKS = {
    "not a peer of the session": (lambda: _answer("site-9", AGREED), "site-9 is not one of the session's peers"),
    "not asked": (lambda: _answer("site-1", AGREED), "site-1 was not asked for the model"),
    "another round": (lambda: _answer("site-2", AGREED, rnd=2), "a model of round 2; round 3's was asked for"),
    "another digest named": (lambda: _answer("site-2", AGREED, digest="ab" * 32), "a model named abababababab"),
    "other bytes under the agreed digest": (
        lambda: _answer("site-2", Params({"w": np.zeros((2, 3), np.float32), "b": np.ones(3, np.float32)})),
        "the model's digest is",
    ),
    "not safetensors": (lambda: _answer("site-2", b"\x08\x00\x00\x00\x00\x00\x00\x00{not json"), "site-2: "),
    "no model": (lambda: _answer("site-2", None), "carries no model"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_a_model_not_the_agreed_one_from_a_peer_asked_is_refused(
    attack: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_attack, why = ATTACKS[attack]
    taken, refusals = await _collect(caplog, make_attack())
    assert len(refusals) == 1 and why in refusals[0], refusals
    assert "\n" not in refusals[0]
    assert taken is not None and params_digest(taken) == DIGEST  # the honest answer after it is taken


async def test_an_oversized_model_is_refused_before_it_is_read(caplog: pytest.LogCaptureFixture) -> None:
    big = Params({"w": np.zeros((512, 512), np.float32)})
    taken, refusals = await _collect(caplog, _answer("site-2", codec.encode(big)), max_bytes=65536)
    assert len(refusals) == 1 and "exceeds the limit of 65536 bytes" in refusals[0], refusals
    assert taken is not None and params_digest(taken) == DIGEST


async def test_another_sessions_model_moved_to_this_one_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    other = Params({"w": np.full((2, 3), 7, np.float32), "b": np.ones(3, np.float32)})
    # Its own session's agreed model, honestly signed by site-2 (a peer of both sessions)...
    signed = sign(_answer("site-2", codec.encode(other), session="session-b", digest=params_digest(other)).envelope,
                  b"site-2 secret")  # fmt: skip
    moved = signed.model_copy(update={"session_id": SESSION})
    # ...moved to this session: its signature no longer holds, so the hub's codec drops it...
    with pytest.raises(AuthenticationError, match="bad signature"):
        Verifier(lambda _: b"site-2 secret").verify(moved)
    # ...and were it re-signed for this session, its digest is not the one agreed here.
    taken, refusals = await _collect(caplog, Message(moved, codec.encode(other)))
    assert len(refusals) == 1 and "a model named" in refusals[0], refusals
    assert taken is not None and params_digest(taken) == DIGEST


async def test_a_peer_that_cannot_hand_it_over_ends_the_wait_at_once() -> None:
    port = _Port()
    request = model_request(SESSION, 3, DIGEST)
    port.inbox.put_nowait(model_answer("site-2", request, AGREED, "cd" * 32))  # a peer holding another model
    collection = _collection(port)
    assert await asyncio.wait_for(collection.collect(["site-2"], timeout_s=300), 30) is None
    assert "holds model cdcdcdcdcdcd" in collection.why_none()
