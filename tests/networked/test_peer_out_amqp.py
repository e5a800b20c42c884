"""``fedhive peer --out`` keeps the final model, ``--json`` keeps stdout JSON lines only, and a
peer that ends leaves no queue behind on the broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aio_pika
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity
from amqp_peers import Peers

from fedhive.core import codec
from fedhive.runtime.peer_rounds import params_digest
from fedhive.transports.amqp_topology import Names

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


def test_peers_keep_their_final_model_and_print_only_json_on_stdout(peers: Peers, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    procs = peers.start(2, 2, "--out", str(out))
    for p in procs:
        assert p.finish(timeout=120) == 0, p.tail()
        rows = [json.loads(line) for line in p.out]  # every line is JSON: nothing else on stdout
        assert [r["round"] for r in rows] == [1, 2]
        assert any("announced" in line for line in p.err) and any("done after 2 rounds" in line for line in p.err)
    last_digest = peers.rounds(procs[0])[2]["digest"]
    for part in ("peer-1-of-2", "peer-2-of-2"):
        model = codec.decode((out / part / "model.safetensors").read_bytes(), max_bytes=10**8)
        assert params_digest(model) == last_digest  # the model every peer agreed on in the last round
        assert len((out / part / "rounds.jsonl").read_text().splitlines()) == 2
    ids = [line.split()[1] for p in procs for line in p.err if line.startswith("peer ") and "announced" in line]
    assert len(ids) == 2
    assert asyncio.run(queues_left(peers.url, [Names(peers.namespace).node_queue(i) for i in ids])) == []


async def queues_left(url: str, names: list[str]) -> list[str]:
    """Those of ``names`` that still exist on the broker (a passive declare of a missing queue
    closes the channel: one channel per name)."""
    left = []
    async with await aio_pika.connect(url) as connection:
        for name in names:
            channel = await connection.channel()
            try:
                await channel.declare_queue(name, passive=True)
                left.append(name)
            except ChannelNotFoundEntity:
                pass
    return left
