"""Peers of a decentralised federation as separate processes, meeting on a RabbitMQ topic.

Every peer of a federation holds the same federation secret: broadcasts have no single recipient
whose key could sign them, so one shared key signs and verifies everything (``peer_codec``). Any
peer can therefore speak for any peer id inside the federation; nobody without the key can speak
at all. Peer ids are fresh random 128-bit values per process, so a restarted peer is a new peer
(it receives the current model and takes part from the next round).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from fedhive.learning.datasets import load_dataset, split_train_test
from fedhive.learning.factory import build_trainer
from fedhive.learning.federation_data import parse_part
from fedhive.learning.trainer import Trainer
from fedhive.runtime.bus import EventBus
from fedhive.runtime.local_data import LocalData
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.peer import PeerNode, PeerRoundCompleted
from fedhive.runtime.peer_gossip import GossipPeer
from fedhive.runtime.peer_rounds import new_peer_id, peer_codec
from fedhive.runtime.session_config import SessionConfig

Observer = Callable[[EventBus], None]


@dataclass(frozen=True)
class PeerSettings:
    min_peers: int = 2
    beat_s: float = 1.0
    peer_timeout_s: float = 5.0
    discovery_timeout_s: float = 120.0
    topic: str = "peers"
    gossip: int = 0  # > 0: gossip averaging with this many partners per round (peer_gossip)


def demo_evaluator(data: LocalData, config: SessionConfig) -> Trainer | None:
    """The held-out rows of a demo data set (the same split as the coordinator's), to report the
    global model's accuracy; None for a peer's own CSV, which has no agreed test set."""
    if data.dataset is None:
        return None
    _, test = split_train_test(load_dataset(data.dataset), data.test_fraction, config.seed)
    return build_trainer(config.model, test.x, test.y, test.num_classes)


async def run_peer(
    key: bytes,
    data: LocalData,
    config: SessionConfig,
    broker: BrokerSettings,
    settings: PeerSettings = PeerSettings(),
    *,
    peer_id: str | None = None,
    observers: Sequence[Observer] = (),
    on_ready: Callable[[str], None] | None = None,
) -> list[PeerRoundCompleted]:
    """Take part until ``config.rounds`` rounds are done; returns each round's digest and metrics.
    Raises ``SessionFailed`` when too few peers come, or a round cannot be committed."""
    trainer = data.trainer_for(config)
    evaluator = demo_evaluator(data, config)
    node_id = peer_id or new_peer_id()
    kind: Callable[..., PeerNode] = (
        functools.partial(GossipPeer, gossip=settings.gossip) if settings.gossip else PeerNode
    )
    async with broker.transport(node_id, peer_codec(key)) as transport:
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
            seed_index=parse_part(data.part)[0] - 1 if data.part else None,
        )
        for attach in observers:
            attach(node.bus)
        if on_ready is not None:
            on_ready(node_id)
        return await node.run()
