"""What ``fedhive serve`` and a remote combiner (``fedhive combiner --agent``) say to each other.

A remote combiner is trusted infrastructure, as in FEDn, but it is not the server: it holds its
own secret only (``fedhive admin site create --role combiner``), never the sites'. So the server
gives each assignment of a site to it a key of its own (a *link key*, fresh per session, combiner
and site) that the two sign their messages to each other with:

- idle beats (combiner -> server): ``heartbeat``s with status ``IDLE``, which is how the server
  lists it ONLINE (and, from a combiner a session holds, how the session knows to send the join
  order again);
- the join order (server -> combiner): an ``enable`` whose body names ``topology: hierarchical``
  and ``order: join``, the session and its liveness settings; the combiner then serves the session
  as ``fedhive combiner`` serves a coordinator, and is idle again when it ends;
- a link (server -> combiner), before the site hears of it: ``order: link``, the site's id and the
  link key sealed under the combiner's secret (``seal_link``);
- the site's copy travels in the ``registered`` that names its combiner (``link`` in the body,
  sealed under the site's own secret).

Sealing is ``peer_orders.seal_key``'s (AES-256-GCM under a key derived from the holder's secret),
with the session, the combiner and the site as associated data: the broker sees ciphertext only,
and a link key opened for one assignment signs nothing else. A revoked combiner's secret is gone
from the server: it is refused at once, and no session is given to it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from fedhive.core.envelope import Kind, Message, make
from fedhive.errors import ProtocolError
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.peer_orders import KEY_BYTES, open_key, seal_key

HIERARCHICAL = "hierarchical"
JOIN, LINK = "join", "link"
IDLE = "IDLE"  # a remote combiner's heartbeat status while it serves no session


def new_link_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def _holder(combiner: str, client: str) -> str:
    return f"{combiner}>{client}"


def seal_link(key: bytes, holder_secret: bytes, *, session_id: str, combiner: str, client: str) -> str:
    """``key`` sealed for one end of the link (the combiner's secret, or the site's)."""
    return seal_key(key, holder_secret, session_id=session_id, site_id=_holder(combiner, client))


def open_link(sealed: str, holder_secret: bytes, *, session_id: str, combiner: str, client: str) -> bytes:
    return open_key(sealed, holder_secret, session_id=session_id, site_id=_holder(combiner, client))


def _order(msg: Message) -> str | None:
    body = msg.envelope.body
    if msg.kind is not Kind.ENABLE or msg.sender != COORDINATOR_ID or body.get("topology") != HIERARCHICAL:
        return None
    order = body.get("order")
    return order if isinstance(order, str) else None


@dataclass(frozen=True)
class JoinOrder:
    """Serve session ``session_id`` under these liveness settings (the session's own)."""

    session_id: str
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    upstream_timeout_s: float

    def message(self) -> Message:
        body: dict[str, Any] = {
            "topology": HIERARCHICAL,
            "order": JOIN,
            "heartbeat_interval_s": self.heartbeat_interval_s,
            "heartbeat_timeout_s": self.heartbeat_timeout_s,
            "upstream_timeout_s": self.upstream_timeout_s,
        }
        return make(Kind.ENABLE, COORDINATOR_ID, session_id=self.session_id, body=body)

    @classmethod
    def read(cls, msg: Message) -> JoinOrder | None:
        if _order(msg) != JOIN:
            return None
        body = msg.envelope.body
        try:
            order = cls(
                msg.envelope.session_id,
                float(body["heartbeat_interval_s"]),
                float(body["heartbeat_timeout_s"]),
                float(body["upstream_timeout_s"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed join order: {str(exc)[:200]}") from None
        if not order.session_id or not 0 < order.heartbeat_interval_s < order.heartbeat_timeout_s:
            raise ProtocolError("malformed join order: no session, or not 0 < heartbeat interval < timeout")
        if order.upstream_timeout_s <= 0:
            raise ProtocolError("malformed join order: the upstream timeout must be positive")
        return order


def link_message(session_id: str, client: str, sealed: str) -> Message:
    body = {"topology": HIERARCHICAL, "order": LINK, "client": client, "key": sealed}
    return make(Kind.ENABLE, COORDINATOR_ID, session_id=session_id, body=body)


def read_link(msg: Message, secret: bytes, combiner: str) -> tuple[str, bytes] | None:
    """(site, link key) of a link order sealed for ``combiner``; None if ``msg`` is no link."""
    if _order(msg) != LINK:
        return None
    body = msg.envelope.body
    client, sealed = body.get("client"), body.get("key")
    if not isinstance(client, str) or not isinstance(sealed, str):
        raise ProtocolError("malformed link order: it needs a client and a key")
    key = open_link(sealed, secret, session_id=msg.envelope.session_id, combiner=combiner, client=client)
    return client, key


def is_order(msg: Message) -> bool:
    """A server's order to a remote combiner (join or link), never its session's own messages."""
    return _order(msg) in (JOIN, LINK)
