"""Peers of a decentralised federation as separate processes, meeting on a RabbitMQ topic.

Every peer of a federation holds the same federation secret: broadcasts have no single recipient
whose key could sign them, so one shared key signs and verifies everything (``peer_codec``). Any
peer can therefore speak for any peer id inside the federation; nobody without the key can speak
at all. Peer ids are fresh random 128-bit values per process, so a restarted peer is a new peer
(it receives the current model and takes part from the next round).

On the broker each peer can have a user of its own (``fedhive peers add --broker-user``): a peer's
id names its login (``amqp_topology.peer_id``), RabbitMQ lets it publish only under its own id and
bind only its own queue, and every peer drops a message whose signed sender names another login
than the one RabbitMQ says published it (``broker_users.peer_sender_check``): with one shared key,
that is what keeps a peer from speaking as another.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedhive.app.learner import Evaluator
from fedhive.core.params import Params
from fedhive.runtime.bus import EventBus
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.peer import PeerNode, PeerRoundCompleted
from fedhive.runtime.peer_gossip import GossipPeer
from fedhive.runtime.peer_rounds import peer_codec
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import SiteApp
from fedhive.transports.amqp_topology import Role, login_of
from fedhive.transports.amqp_topology import peer_id as amqp_peer_id
from fedhive.transports.broker_users import peer_sender_check

Observer = Callable[[EventBus], None]


@dataclass(frozen=True)
class PeerSettings:
    min_peers: int = 2
    beat_s: float = 1.0
    peer_timeout_s: float = 5.0
    discovery_timeout_s: float = 120.0
    topic: str = "peers"
    gossip: int = 0  # > 0: gossip averaging with this many partners per round (peer_gossip)


async def run_peer(
    key: bytes,
    site: SiteApp,
    config: SessionConfig,
    broker: BrokerSettings,
    settings: PeerSettings = PeerSettings(),
    *,
    evaluator: Evaluator | None = None,
    seed_index: int | None = None,
    initial: Params | None = None,
    peer_id: str | None = None,
    observers: Sequence[Observer] = (),
    on_ready: Callable[[str], None] | None = None,
    on_finished: Callable[[Params], None] | None = None,
) -> list[PeerRoundCompleted]:
    """Take part until ``config.rounds`` rounds are done with the site's app; returns each round's
    digest and metrics. ``evaluator`` (if any) evaluates each round's model; ``seed_index`` orders
    the peers' training seeds (a demo part's index); ``initial`` is the seed model to start from
    instead of the app's init (the same on every peer). Raises ``SessionFailed`` when too few peers
    come, or a round cannot be committed. ``on_finished`` gets the final model (``fedhive peer --out``)."""
    trainer = site.trainer_for(config)
    node_id = peer_id or amqp_peer_id(login_of(broker.url))
    kind: Callable[..., PeerNode] = (
        functools.partial(GossipPeer, gossip=settings.gossip) if settings.gossip else PeerNode
    )
    transport = broker.transport(
        node_id, peer_codec(key), ephemeral=True, role=Role.PEER, sender_check=peer_sender_check
    )
    async with transport:
        node = kind(
            transport,
            trainer,
            config,
            min_peers=settings.min_peers,
            topic=settings.topic,
            beat_s=settings.beat_s,
            peer_timeout_s=settings.peer_timeout_s,
            discovery_timeout_s=settings.discovery_timeout_s,
            evaluator=evaluator,
            seed_index=seed_index,
            initial=initial,
        )
        for attach in observers:
            attach(node.bus)
        if on_ready is not None:
            on_ready(node_id)
        history = await node.run()
        if on_finished is not None and node.params is not None:
            on_finished(node.params)
        return history
