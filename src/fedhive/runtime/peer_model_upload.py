"""A decentralised session's final model, from one of its peers to ``fedhive serve``.

The peers agree on each round's model by its digest (``peer_rounds.params_digest``) and tell the
server that digest in their reports (``peer_orders``). Once they agree on the last round's, the
server asks the agents whose peers finished for the model (``model_request``: a ``train`` naming
``topology: decentralised``, ``upload: true``, the round and the digest, so a store that presigns
grants the answer an upload URL as it does a star round's) and each answers on its own signed
channel with a ``peer_update`` of type ``final_model`` carrying the model as safetensors
(``model_answer``), or with an ``error`` saying why it cannot.

What the server takes (``read_model``) is checked against what the peers agreed, never against
what the sender claims: the round asked for, a safetensors payload within the session's update
limit, finite, and whose recomputed digest is the agreed one. So one site, holding a valid
identity, cannot plant a model: another session's model, or any model but the agreed one, has
another digest, and the envelope (session id and round included) is signed with the site's own
secret, so a message cannot be moved to another session.
"""

from __future__ import annotations

import numpy as np

from fedhive.core import codec
from fedhive.core.bodies import PeerUpdateBody, parse_body
from fedhive.core.envelope import Deferred, Kind, Message, make
from fedhive.core.params import Params, check_finite
from fedhive.errors import FedhiveError, PayloadError, ProtocolError
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.peer_orders import DECENTRALISED, failure_message
from fedhive.runtime.peer_rounds import params_digest

FINAL_MODEL = "final_model"


def model_request(session_id: str, round: int, digest: str) -> Message:
    """The server's ask: the model of ``round`` the peers agreed on (``digest``)."""
    body = {"topology": DECENTRALISED, "upload": True, "digest": digest}
    return make(Kind.TRAIN, COORDINATOR_ID, session_id=session_id, round=round, body=body)


def is_model_request(msg: Message) -> bool:
    body = msg.envelope.body
    return msg.kind is Kind.TRAIN and body.get("topology") == DECENTRALISED and body.get("upload") is True


def model_answer(agent_id: str, request: Message, params: Params | None, held_digest: str) -> Message:
    """An agent's answer to ``request``: its peer's model if it is the one asked for, else why not."""
    env = request.envelope
    wanted = str(env.body.get("digest", ""))
    if params is None:
        return failure_message(agent_id, env.session_id, f"{agent_id} holds no model of session {env.session_id}")
    if held_digest != wanted:
        why = f"{agent_id} holds model {held_digest[:12]} of session {env.session_id}, not {wanted[:12]}"
        return failure_message(agent_id, env.session_id, why)
    body = PeerUpdateBody.model_construct(type=FINAL_MODEL, digest=held_digest).to_body()
    return make(Kind.PEER_UPDATE, agent_id, session_id=env.session_id, round=env.round, body=body, payload=params)


def is_model_answer(msg: Message) -> bool:
    return msg.kind is Kind.PEER_UPDATE and msg.envelope.body.get("type") == FINAL_MODEL


def read_model(msg: Message, *, round: int, digest: str, max_bytes: int) -> Params:
    """The model ``msg`` carries if it is the agreed one of ``round``; ``FedhiveError`` (one line) if not.

    Blocking (it may fetch a claim-checked payload and hashes the model): run it in a worker thread."""
    body = parse_body(PeerUpdateBody, msg)
    if msg.envelope.round != round:
        raise ProtocolError(f"a model of round {msg.envelope.round}; round {round}'s was asked for")
    if body.digest != digest:
        raise ProtocolError(f"a model named {str(body.digest)[:12]}; the peers agreed on {digest[:12]}")
    params = _payload(msg, max_bytes)
    actual = params_digest(params)
    if actual != digest:
        raise ProtocolError(f"the model's digest is {actual[:12]}; the peers agreed on {digest[:12]}")
    return params


def _payload(msg: Message, max_bytes: int) -> Params:
    p = msg.payload
    if p is None:
        raise PayloadError("the answer carries no model")
    if isinstance(p, Params):  # in one process (memory transport): the peer's own arrays
        if p.nbytes > max_bytes:
            raise PayloadError(f"a model of {p.nbytes} bytes exceeds the limit of {max_bytes} bytes")
        check_finite(p, what="model")
        return Params({n: np.array(a, copy=True) for n, a in p.items()})
    size = p.nbytes if isinstance(p, Deferred | memoryview) else len(p)
    if size > max_bytes:
        raise PayloadError(f"a model of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        data = bytes(p.load() if isinstance(p, Deferred) else p)  # a copy: the claim goes back below
        return codec.decode(data, max_bytes=max_bytes, what="model")  # safetensors only
    except FedhiveError:
        raise
    except ValueError as exc:
        raise PayloadError(f"the model is not valid safetensors: {str(exc)[:200]}") from None
    finally:
        if isinstance(p, Deferred):
            p.discard()
