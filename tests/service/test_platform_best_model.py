"""The best round's model is kept in the platform's registry beside the final one.

A session started over the REST API with ``key_metric`` and ``mode`` registers two versions: the
final model, and the best round's model with ``best_round`` (and the figure that made it the best)
in its metrics. ``mode = max`` on the loss makes an early round the best (the loss falls as the
model trains), so the two differ."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from fedhive.core import codec
from service.test_platform_flow import csv_bytes, platform, sign_up_and_in, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROUNDS = 4


async def test_the_best_rounds_model_is_a_version_beside_the_final_one(tmp_path: Path) -> None:
    async with platform(tmp_path) as http:
        auth = await sign_up_and_in(http)

        async def three_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= 3

        await wait_for(three_online)
        form = {"label": "kind", "model": "simple-dnn:16", "rounds": str(ROUNDS), "epochs": "2", "lr": "0.05"}
        form |= {"min_peers": "3", "key_metric": "loss", "mode": "max"}
        files = {"dataset": ("data.csv", io.BytesIO(csv_bytes()), "text/csv")}
        r = await http.post("/sessions/start", headers=auth, data=form, files=files)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def finished() -> dict | None:
            status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
            return status if status["status"] in ("COMPLETED", "FAILED") else None

        status = await wait_for(finished, deadline_s=150)
        assert status["status"] == "COMPLETED", status
        rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
        losses = [r["metrics"]["loss"] for r in rounds]
        best_round = 1 + int(np.argmax(losses))
        assert best_round < ROUNDS, losses  # the setting makes an early round the best

        final = (await http.get(f"/sessions/{sid}", headers=auth)).json()["final_model"]
        versions = (await http.get(f"/models/{final['name']}/versions", headers=auth)).json()
        mine = {v["version"]: v for v in versions if v["session_id"] == sid}
        assert len(mine) == 2 and final["version"] == max(mine)  # the final model stays the newest
        best = mine[min(mine)]
        assert best["metrics"]["best_round"] == best_round
        assert best["metrics"]["loss"] == pytest.approx(max(losses))
        assert "best_round" not in mine[final["version"]]["metrics"]

        async def weights(version: int) -> dict[str, np.ndarray]:
            r = await http.get(f"/models/{final['name']}/versions/{version}/download", headers=auth)
            assert r.status_code == 200
            return dict(codec.decode(r.content, max_bytes=1 << 24).items())

        best_weights, final_weights = await weights(best["version"]), await weights(final["version"])
        assert best_weights.keys() == final_weights.keys()
        assert any(not np.array_equal(best_weights[k], final_weights[k]) for k in best_weights)


async def test_a_bad_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    async with platform(tmp_path, local_clients=0) as http:
        auth = await sign_up_and_in(http)
        r = await http.post("/sessions/start", headers=auth, data={"mode": "sideways"})
        assert r.status_code == 422, r.text
