"""``fedhive clients``, ``coordinator`` and ``client`` as a user runs them: output, exit codes, files.

These run the command's ``main()`` in this process (the same argument parsing, error mapping and
exit codes as the installed script, without seconds of interpreter start-up per case); the tests
under tests/networked run real processes against a broker.
"""

from __future__ import annotations

import json
import logging
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedhive.cli.main import main

NOBODY = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def fedhive(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    def run(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["fedhive", *args])
        # The service commands raise fedhive's log level; keep that from leaking into other tests.
        levels = {n: logging.getLogger(n).level for n in ("fedhive", "aiormq", "aio_pika")}
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def one_error_line(proc: Result, code: int = 2) -> str:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_clients_add_prints_id_and_secret_once_and_list_never_shows_secrets(
    fedhive: Callable[..., Result], tmp_path: Path
) -> None:
    store = tmp_path / "clients.json"
    added = fedhive("clients", "add", "alice", "--store", str(store))
    assert added.returncode == 0, added.stderr
    client_id = added.stdout.split("client id")[1].split()[0]
    secret = added.stdout.split("secret")[1].split()[0]
    assert client_id.startswith("alice-") and len(secret) == 64 and "not shown again" in added.stderr
    assert stat.S_IMODE(store.stat().st_mode) == 0o600

    many = fedhive("clients", "add", "site", "--count", "3", "--json", "--store", str(store))
    ids = [json.loads(line)["client_id"] for line in many.stdout.splitlines()]
    assert [i.rsplit("-", 1)[0] for i in ids] == ["site-1", "site-2", "site-3"]

    listed = fedhive("clients", "list", "--store", str(store))
    assert listed.returncode == 0 and client_id in listed.stdout and secret not in listed.stdout
    assert len(listed.stdout.splitlines()) == 4

    assert fedhive("clients", "remove", client_id, "--store", str(store)).returncode == 0
    assert client_id not in fedhive("clients", "list", "--store", str(store)).stdout
    assert "no client" in one_error_line(fedhive("clients", "remove", client_id, "--store", str(store)))
    assert "client name" in one_error_line(fedhive("clients", "add", "coordinator", "--store", str(store)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = [", "invalid TOML"),
        ("roundz = 3\n[data]\n", "unknown setting 'roundz'"),
        ("min_clients = 0\n[data]\n", "min_clients"),
        ("model = 'gpt'\n[data]\n", "gpt"),
    ],
)
def test_a_bad_session_file_is_one_line_and_exit_2(
    fedhive: Callable[..., Result], tmp_path: Path, text: str, message: str
) -> None:
    config = tmp_path / "session.toml"
    config.write_text(text)
    line = one_error_line(fedhive("coordinator", "--broker", NOBODY, "--config", str(config), "--out", str(tmp_path)))
    assert message in line and "session.toml" in line


def test_an_unreachable_broker_is_one_line_without_the_password(fedhive: Callable[..., Result], tmp_path: Path) -> None:
    config = tmp_path / "session.toml"
    config.write_text("model = 'logreg-np'\n[data]\ndataset = 'iris'\n")
    line = one_error_line(fedhive("coordinator", "--broker", NOBODY, "--config", str(config), "--out", str(tmp_path)))
    assert "cannot connect to the AMQP broker" in line and "guest:***@" in line


SECRET = "ab" * 32


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--id", "x", "--secret", SECRET, "--csv", "missing.csv", "--label", "y"], "missing.csv does not exist"),
        (["--id", "x", "--secret", SECRET, "--csv", "missing.csv"], "--csv needs --label"),
        (["--id", "x", "--secret", SECRET], "give the client's data"),
        (["--id", "x", "--secret", SECRET, "--dataset", "digits"], "needs --part"),
        (["--id", "x", "--secret", SECRET, "--dataset", "digits", "--part", "4/3"], "--part 4/3"),
        (["--id", "x", "--secret", "hunter2", "--dataset", "digits", "--part", "1/3"], "64 hexadecimal digits"),
        (["--dataset", "digits", "--part", "1/3"], "--id and --secret are required"),
        (["--virtual", "5", "--dataset", "digits"], "needs --credentials"),
    ],
)
def test_client_user_errors_are_one_line_and_exit_2(
    fedhive: Callable[..., Result], args: list[str], message: str
) -> None:
    assert message in one_error_line(fedhive("client", "--broker", NOBODY, *args))
