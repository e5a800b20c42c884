"""A hierarchical session's coordinator over remote combiners (``fedhive combiner --agent``).

The coordinator is unchanged; its transport (the session's hub port) is wrapped here
(``RemoteCombinerLinks``) to do what a remote combiner needs and a combiner of the server's own
does not (``runtime.combiner_orders``):

- each assignment of a site to a remote combiner gets a link key: sealed for the combiner in a
  link order sent first, sealed for the site in the ``registered`` that names the combiner. The
  key is kept for the session, so an assignment repeated (a site asking again) keeps both ends on
  the same key;
- a remote combiner that beats as idle (``IDLE``) while the session holds it is not serving it:
  its join order was lost, or it restarted, or it gave the session up while the server was down.
  The beat goes no further (the coordinator would take it for a combiner alive in the session),
  and it is sent the join order again once the coordinator counts it OFFLINE or has never heard
  of it (``counted``): only then does the coordinator take its registration for a new combiner's,
  and enable it.

On the broker, a remote combiner with a broker user of its own (``fedhive admin site create
--role combiner --broker-user``) publishes down to a site only through the down exchange, which
reaches the site while the hub has bound the site's queue under SITE.COMBINER: the link opens
that route (``routes.route_down``) before the site hears of its combiner, and the end of the
session closes the routes it opened (``close``), as the command-line coordinator does
(``runtime.hierarchy_networked.CombinerRoutes``). A combiner holds no route to a site of another
session, nor to one of this session assigned elsewhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from fedhive.core.envelope import Kind, Message, make
from fedhive.errors import TransportError
from fedhive.runtime.combiner_orders import IDLE, JoinOrder, link_message, new_link_key, seal_link
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.service_nodes import SecretOf
from fedhive.transports.base import Transport, TransportWrapper

log = logging.getLogger("fedhive.sessions")


class DownRoutes(Protocol):
    """The hub's broker transport (``AmqpTransport``): who may reach a site through the down exchange."""

    async def route_down(self, client: str, combiner: str) -> None: ...

    async def drop_route(self, client: str, combiner: str) -> None: ...


def join_order(config: SessionConfig) -> JoinOrder:
    """The session's liveness settings for a combiner, as for one the server runs itself."""
    timeout = config.heartbeat_timeout_s or 20.0
    interval = config.heartbeat_interval_s or timeout / 4
    return JoinOrder(config.session_id, interval, timeout, max(60.0, 3 * timeout))


class RemoteCombinerLinks(TransportWrapper):
    def __init__(
        self,
        inner: Transport,
        config: SessionConfig,
        combiners: Sequence[str],
        secret_of: SecretOf,
        routes: DownRoutes | None = None,
    ) -> None:
        super().__init__(inner)
        self.routes = routes  # None: no broker (the in-memory network routes by id)
        self._routed: dict[str, str] = {}  # site -> the combiner its down route opens to
        self.session_id = config.session_id
        self.combiners = frozenset(combiners)
        self.order = join_order(config)
        self.secret_of = secret_of
        self._keys: dict[tuple[str, str], bytes] = {}  # (combiner, site) -> its link key
        # Whether the coordinator counts the combiner alive in the session (set by its owner).
        self.counted: Callable[[str], bool] = lambda _combiner: False

    async def join(self, combiner: str) -> None:
        try:
            await self.inner.send(combiner, self.order.message())
        except TransportError as exc:
            log.warning("session %s: could not reach combiner %s: %s", self.session_id, combiner, exc)

    async def drop_routes(self) -> None:
        """Close the down routes this session opened (its sites are no longer its combiners')."""
        routed, self._routed = self._routed, {}
        if self.routes is not None:
            for client, combiner in routed.items():
                try:
                    await self.routes.drop_route(client, combiner)
                except TransportError as exc:
                    log.warning("session %s: could not close the route %s -> %s: %s", self.session_id, combiner,
                                client, exc)  # fmt: skip

    async def send(self, to: str, message: Message) -> None:
        await self.inner.send(to, await self._linked(to, message))

    async def send_many(self, items: Sequence[tuple[str, Message]]) -> list[TransportError | None]:
        if not any(m.kind is Kind.REGISTERED for _, m in items):
            return await self.inner.send_many(items)  # a round's TRAINs keep the batching
        return await super().send_many(items)

    async def recv(self) -> Message:
        while True:
            msg = await self.inner.recv()
            body = msg.envelope.body
            if msg.sender in self.combiners and msg.kind is Kind.HEARTBEAT and body.get("status") == IDLE:
                if not self.counted(msg.sender):
                    log.info("session %s: combiner %s is idle; sending it the join order", self.session_id, msg.sender)
                    await self.join(msg.sender)
                continue
            return msg

    async def _linked(self, client: str, message: Message) -> Message:
        """A ``registered`` naming a remote combiner, with the site's copy of the link key (the
        combiner's sent first); any other message as it is."""
        combiner = message.envelope.body.get("combiner") if message.kind is Kind.REGISTERED else None
        if not isinstance(combiner, str) or combiner not in self.combiners:
            return message
        sid = self.session_id
        combiner_secret, client_secret = self.secret_of(combiner), self.secret_of(client)
        if combiner_secret is None or client_secret is None:  # revoked since: the site will ask again
            log.warning("session %s: no secret for %s or %s (revoked?); no link", sid, combiner, client)
            return message
        await self._route(client, combiner)
        key = self._keys.setdefault((combiner, client), new_link_key())
        sealed = seal_link(key, combiner_secret, session_id=sid, combiner=combiner, client=client)
        await self.inner.send(combiner, link_message(sid, client, sealed))
        body = {**message.envelope.body, "link": seal_link(key, client_secret, session_id=sid, combiner=combiner,
                                                           client=client)}  # fmt: skip
        env = message.envelope
        return make(Kind.REGISTERED, env.sender, session_id=env.session_id, round=env.round, body=body)

    async def _route(self, client: str, combiner: str) -> None:
        """Open the way down from ``combiner`` to ``client`` (closing the one from the site's
        combiner before, if any) before either hears of the assignment."""
        if self.routes is None:
            return
        try:
            await self.routes.route_down(client, combiner)
        except TransportError as exc:  # its answers to the site fail as unroutable; the site asks again
            log.warning("session %s: could not route %s to %s: %s", self.session_id, client, combiner, exc)
            return
        self._routed[client] = combiner
