"""Open metrics through the REST API and the dashboard's data, without a browser: a session of an
app that reports ``mse`` and, from round 2, ``r2`` runs on the platform's three local peers; the
rounds, the training status and the session page's data carry both. (The privacy chart's shaping
is in test_charts.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.test_platform_flow import platform, sign_up_and_in, wait_for
from web.regression_app import NAME, write_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROUNDS = 3


async def test_an_apps_own_metrics_reach_the_api_and_the_charts(tmp_path: Path) -> None:
    async with platform(tmp_path / "home", apps=[str(write_app(tmp_path / "apps"))]) as http:
        auth = await sign_up_and_in(http)

        async def three_online() -> bool:
            peers = (await http.get("/peers", headers=auth)).json()
            return sum(p["status"] == "ONLINE" for p in peers) >= 3

        await wait_for(three_online)
        form = {"app": NAME, "rounds": str(ROUNDS), "epochs": "2", "min_peers": "3"}
        r = await http.post("/sessions/start", headers=auth, data=form)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]

        async def finished() -> dict | None:
            status = (await http.get(f"/sessions/{sid}/training-status", headers=auth)).json()
            return status if status["status"] in ("COMPLETED", "FAILED") else None

        status = await wait_for(finished, deadline_s=150)
        assert status["status"] == "COMPLETED", status

        # REST: the federated evaluation's figures under the app's names, the clients' training
        # figures under "train"
        rounds = (await http.get(f"/sessions/{sid}/rounds", headers=auth)).json()
        assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
        assert ["r2" in r["metrics"] for r in rounds] == [False] + [True] * (ROUNDS - 1)
        assert all(-10 < r["metrics"]["r2"] <= 1 for r in rounds[1:])
        assert all("mse" in r["metrics"] and "mse" in r["metrics"]["train"] for r in rounds)
        assert status["last_round"]["metrics"]["r2"] == rounds[-1]["metrics"]["r2"]
        assert sorted(res["client_id"] for res in status["last_results"]) == ["local-1", "local-2", "local-3"]
        assert all({"mse", "r2"} <= set(res["metrics"]) for res in status["last_results"])

        # the session page's data: a chart per metric, box plots per client metric
        page = (await http.get(f"/ui/data/sessions/{sid}", headers=auth)).json()
        assert page["rounds"] == list(range(1, ROUNDS + 1))
        charts = {c["metric"]: {s["label"]: s["values"] for s in c["series"]} for c in page["charts"]}
        assert list(charts) == ["mse", "r2"]
        assert charts["r2"]["r2"] == [None] + [r["metrics"]["r2"] for r in rounds[1:]]
        assert charts["r2"]["train_r2"][0] is None and None not in charts["r2"]["train_r2"][1:]
        boxes = {b["metric"]: b["boxes"] for b in page["boxes"]}
        assert [b["round"] for b in boxes["r2"]] == list(range(2, ROUNDS + 1))
        assert [b["n"] for b in boxes["mse"]] == [3] * ROUNDS
        assert page["client_metrics"] == ["mse", "r2"]
        assert all(set(c["metrics"]) == {"mse", "r2"} for c in page["clients"])
