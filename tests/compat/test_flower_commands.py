"""A Flower app named where a session or a site is set up: ``app = "flower:PATH"`` in a session
file (the ServerApp fills what the file leaves out), ``fedhive agent`` and ``fedhive peer`` with
``--flower-app``, and their mistakes in one line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="the Flower adapter needs flwr (pip install 'fedhive[flower]')")

from fedhive.cli.session_file import load_session_file
from fedhive.errors import ConfigError
from processes import Proc

APPS = Path(__file__).parent / "apps"
FEDHIVE = [sys.executable, "-m", "fedhive.cli.main"]


@pytest.fixture
def app(tmp_path: Path) -> Path:
    copy = tmp_path / "apps" / "numpy_message"
    shutil.copytree(APPS / "numpy_message", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_session_file_runs_a_flower_app_with_its_serverapps_defaults(app: Path, tmp_path: Path) -> None:
    path = tmp_path / "session.toml"
    path.write_text('app = "flower:apps/numpy_message"\nmin_clients = 2\n')  # relative to the file
    session = load_session_file(path)
    config = session.config
    assert session.loaded.name == "flhive-numpy" and config.app == "flhive-numpy" and config.app_digest
    assert config.rounds == 3 and config.strategy == "fedavg"  # num-server-rounds, FedAvg
    assert config.run_config["learning-rate"] == 0.05  # [tool.flwr.app.config]
    assert config.evaluate_every == 1  # the ServerApp's clients evaluate (fraction_evaluate 1.0)

    path.write_text(f'app = "flower:{app}"\nrounds = 5\nstrategy = "fedmedian"\n[run_config]\nlearning-rate = 0.01\n')
    config = load_session_file(path).config
    assert (config.rounds, config.strategy, config.run_config["learning-rate"]) == (5, "fedmedian", 0.01)


@pytest.mark.parametrize(
    ("ref", "message"),
    [("flower:", "needs the Flower project's folder"), ("flower:nowhere", "is not a Flower project")],
)
def test_a_session_files_flower_app_mistake_is_one_line_naming_the_file(tmp_path: Path, ref: str, message: str) -> None:
    path = tmp_path / "session.toml"
    path.write_text(f'app = "{ref}"\n')
    with pytest.raises(ConfigError) as caught:
        load_session_file(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("agent", ["--flower-app", "APP", "--flower-app", "APP"], "an app named 'flhive-numpy' is given twice"),
        ("agent", ["--flower-app", "MISSING"], "is not a Flower project"),
        ("peer", ["--app", "builtin", "--flower-app", "APP"], "give --app or --flower-app, not both"),
        ("peer", ["--flower-app", "APP", "--dataset", "digits"], "a Flower app reads its own data"),
    ],
)
def test_agent_and_peer_flower_option_mistakes_are_one_line(
    app: Path, tmp_path: Path, command: str, extra: list[str], message: str
) -> None:
    args = [str(app) if a == "APP" else str(tmp_path / "nothing") if a == "MISSING" else a for a in extra]
    identity = ["--id", "x", "--secret", "ab" * 32] if command == "agent" else ["--secret", "ab" * 32]
    proc = Proc(command, [*FEDHIVE, command, "--broker", "amqp://guest:guest@127.0.0.1:1/", *identity, *args])
    assert proc.finish(timeout=120) == 2, proc.tail()
    lines = [line for line in proc.err if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.tail()
