"""``fedhive peer --out`` keeps the final model, and ``--json`` keeps stdout JSON lines only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_p2p_peers_amqp import Peers

from fedhive.core import codec
from fedhive.runtime.peer_rounds import params_digest

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


@pytest.fixture
def peers(rabbitmq_url: str) -> Iterator[Peers]:
    p = Peers(rabbitmq_url)
    try:
        yield p
    finally:
        p.teardown()


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
