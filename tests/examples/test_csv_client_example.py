"""examples/csv_client: a client app that trains on its own CSV file (``--node data=PATH``).

End to end: a ``fedhive coordinator`` and two ``fedhive client --app examples/csv_client`` processes
over a real RabbitMQ, each client with half of iris in its own file; and the one-line error a
malformed file gives.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
import pytest

import fedhive
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.transports.amqp import delete_namespace
from processes import Proc
from session_results import latest_results

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "csv_client"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]
ROUNDS = 3
HEADER = "sepal_length,sepal_width,petal_length,petal_width,species"


def write_iris_halves(root: Path) -> tuple[Path, Path]:
    """Iris shuffled and cut in two: one file per site, the label column named ``species``."""
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    paths = []
    for name, rows in (("site-a.csv", order[:75]), ("site-b.csv", order[75:])):
        path = root / name
        lines = [HEADER] + [",".join(f"{v:g}" for v in x[i]) + f",{y[i]}" for i in rows]
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture
def namespace(rabbitmq_url: str) -> Iterator[tuple[str, set[str], list[Proc]]]:
    """A throw-away AMQP namespace, the node ids to clean up in it, and the processes to kill."""
    ns = f"test-{uuid4().hex[:8]}"
    ids = {COORDINATOR_ID}
    procs: list[Proc] = []
    try:
        yield ns, ids, procs
    finally:
        for p in procs:
            p.kill()
        asyncio.run(delete_namespace(rabbitmq_url, ns, ids))


@pytest.mark.amqp
def test_two_client_processes_train_on_their_own_csv_files(
    rabbitmq_url: str, namespace: tuple[str, set[str], list[Proc]], tmp_path: Path
) -> None:
    ns, ids, procs = namespace
    started = time.perf_counter()
    files = write_iris_halves(tmp_path)
    store = tmp_path / "clients.json"
    added = subprocess.run(
        [*FEDHIVE, "clients", "add", "site", "--count", "2", "--json", "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert added.returncode == 0, added.stderr
    idents = [json.loads(line) for line in added.stdout.splitlines()]
    ids.update(i["client_id"] for i in idents)

    session = tmp_path / "session.toml"
    session.write_text(
        f'session_id = "csv-{ns}"\n'
        f'app = "{PROJECT}"\n'
        f"rounds = {ROUNDS}\n"
        "min_clients = 2\n"
        "registration_timeout_s = 60\n"
        "round_timeout_s = 30\n"
        "heartbeat_interval_s = 0.5\n"
        "heartbeat_timeout_s = 5.0\n"
        "epochs = 5\n"
        "batch_size = 16\n"
        "lr = 0.1\n"
        "seed = 0\n"
        "[run_config]\n"
        "num_features = 4\n"
        "num_classes = 3\n"
    )
    broker = ["--broker", rabbitmq_url, "--namespace", ns]
    out = tmp_path / "run"
    coordinator = Proc(
        "coordinator",
        [
            *FEDHIVE,
            "coordinator",
            *broker,
            "--config",
            str(session),
            "--store",
            str(store),
            "--out",
            str(out),
            "--json",
        ],
    )
    procs.append(coordinator)
    coordinator.wait_for("coordinator ready", stream="err")
    clients = []
    for ident, data in zip(idents, files, strict=True):
        args = ["client", *broker, "--id", ident["client_id"], "--app", str(PROJECT)]
        args += ["--node", f"data={data}", "--node", "label=species", "--state-dir", str(tmp_path / ident["client_id"])]
        clients.append(Proc(ident["client_id"], [*FEDHIVE, *args], env={"FEDHIVE_CLIENT_SECRET": ident["secret"]}))
    procs.extend(clients)

    for c in clients:
        c.wait_for(f"registered with the coordinator as {c.name}")
    assert coordinator.finish(120) == 0, coordinator.tail()
    for c in clients:
        assert c.finish(30) == 0, c.tail()
        assert c.out[-1] == f"stopped by the coordinator after {ROUNDS} rounds of training", c.tail()
    wall = time.perf_counter() - started

    summary = json.loads(coordinator.out[-1])
    assert summary["rounds"] == ROUNDS and summary["clients"] == 2
    out = latest_results(out)  # the session's own folder under --out
    assert out.name == summary["session_id"]
    assert (out / "model.safetensors").is_file()
    assert Path(summary["model"]) == out / "model.safetensors"
    with (out / "rounds.csv").open() as f:
        rounds = list(csv.DictReader(f))
    assert [(r["round"], r["updates"]) for r in rounds] == [(str(i), "2") for i in range(1, ROUNDS + 1)]
    train_accuracy = float(rounds[-1]["train_accuracy"])
    print(f"csv_client over RabbitMQ: {ROUNDS} rounds, 2 sites, train accuracy {train_accuracy:.4f}, {wall:.1f} s")
    assert train_accuracy > 0.8, rounds[-1]


# --- the site's file: one line naming the row and the column --------------------------------------


def _task() -> Any:
    fedhive.load_app(str(PROJECT))  # puts the project folder on sys.path, as the CLI does
    from csv_client import task

    return task


GOOD = "a,b,c,d,label\n1,2,3,4,0\n5,6,7,8,1\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a,b,c,d,label\n1,2,3,4,0\n1,2,x3,4,1\n", ["row 3", "column 'c'", "'x3' is not a number"]),
        ("a,b,c,d,label\n1,2,3,4,0\n\n1,2,3,4\n", ["row 4 has 4 values", "5 columns"]),
        ("a,b,c,d,y\n1,2,3,4,0\n", ["row 1", "no label column 'label'", "a, b, c, d, y"]),
        ("a,b,c,d,label\n1,2,3,4,0\n1,2,3,4,1.5\n", ["row 3", "column 'label'", "'1.5' is not a class id"]),
        ("a,b,c,d,label\n1,2,3,4,0\n1,2,3,4,7\n", ["row 3", "column 'label'", "num_classes=3"]),
        ("a,b,c,label\n1,2,3,0\n", ["row 1", "3 feature columns", "num_features=4"]),
        ("a,b,c,d,label\n1,2,nan,4,0\n", ["row 2", "column 'c'", "not a finite number"]),
        ("", ["row 1", "empty"]),
    ],
    ids=[
        "not-a-number",
        "ragged-row",
        "no-label-column",
        "fractional-label",
        "label-too-big",
        "too-few-features",
        "nan",
        "empty-file",
    ],
)
def test_a_malformed_file_is_one_data_error_line_naming_row_and_column(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    task = _task()
    path = tmp_path / "site.csv"
    path.write_text(text)
    with pytest.raises(fedhive.DataError) as caught:
        task.read_csv(path, "label", num_features=4, num_classes=3)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    for part in expected:
        assert part in message, message


def test_the_app_reads_its_file_from_ctx_node(tmp_path: Path) -> None:
    loaded = fedhive.load_app(str(PROJECT))
    init, train, evaluate = (loaded.app.hook(h) for h in ("init", "train", "evaluate"))
    config = {**loaded.run_config, "round": 1, "seed": 1, "epochs": 2, "batch_size": 4, "lr": 0.1, "momentum": 0.9}

    weights = init(fedhive.Weights(), config, fedhive.Context("server"))  # no data needed
    assert {k: v.shape for k, v in weights.items()} == {"weight": (4, 3), "bias": (3,)}

    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    result = train(fedhive.Weights(weights), config, fedhive.Context("site", {"data": str(good)}))
    assert set(result.metrics) == {"loss", "accuracy"} and result.num_examples >= 1
    scored = evaluate(fedhive.Weights(result.weights), config, fedhive.Context("site", {"data": str(good)}))
    assert set(scored.metrics) == {"loss", "accuracy"}

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c,d,label\n1,2,3,4,0\n1,oops,3,4,1\n")
    with pytest.raises(fedhive.DataError, match=r"row 3, column 'b': 'oops' is not a number"):
        train(fedhive.Weights(weights), config, fedhive.Context("site", {"data": str(bad)}))
    with pytest.raises(fedhive.AppError, match=r"ctx\.node has no 'data'"):
        train(fedhive.Weights(weights), config, fedhive.Context("site"))
    missing = tmp_path / "missing.csv"
    with pytest.raises(fedhive.DataError, match="cannot read CSV file"):
        train(fedhive.Weights(weights), config, fedhive.Context("site", {"data": str(missing)}))
