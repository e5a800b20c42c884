"""The same user app as decentralised peers: each peer runs it through ``SiteApp`` (as ``fedhive
peer --app`` does), all hold the same model after every round, and each reports the app's own
metric on its own data."""

from __future__ import annotations

import asyncio

import numpy as np

from fedhive.runtime.peer import PeerNode
from fedhive.runtime.peer_rounds import new_peer_id
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.site_app import SiteApp, session_with_app
from fedhive.transports.memory import MemoryNetwork
from linear_app import app, loaded


async def test_a_user_app_runs_unchanged_as_peers() -> None:
    linear = loaded(app)
    config = session_with_app(
        SessionConfig(rounds=4, lr=0.2, epochs=3, seed=7, round_timeout_s=5.0, registration_timeout_s=10.0), linear
    )
    net = MemoryNetwork()
    nodes = []
    for i in range(3):
        site = SiteApp(linear, f"peer-{i}", {"partition_id": i, "num_partitions": 3})
        trainer = site.trainer_for(config)
        node = PeerNode(
            net.connect(new_peer_id()), trainer, config, min_peers=3, beat_s=0.05, peer_timeout_s=0.4,
            evaluator=trainer, seed_index=i,
        )  # fmt: skip
        nodes.append(node)
    async with asyncio.timeout(30):
        histories = await asyncio.gather(*(n.run() for n in nodes))
    assert all([h.digest for h in history] == [h.digest for h in histories[0]] for history in histories)
    first, last = histories[0][0].metrics["mse"], histories[0][-1].metrics["mse"]
    assert last < first / 2, (first, last)
    assert all(n.params is not None and np.isfinite(n.params["w"]).all() for n in nodes)
