"""The broker password in the process list: every user of a machine can read every process's
command line (``ps``, ``/proc/PID/cmdline``). Given through the environment or a file, the URL
reaches ``fedhive client`` (it connects to the host and port in it) and its password appears
nowhere in the command line; given with ``--broker`` it still works, with a warning."""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import Proc

pytestmark = pytest.mark.slow  # each client process starts Python, torch and its data set

PASSWORD = "hunter2-not-in-ps"
SECRET = "ab" * 32  # a well-formed client secret; nothing answers it here


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A port of our own standing in for the broker: the client's connection proves it read the URL."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        sock.settimeout(90)  # generous: the client imports torch and loads its data set first
        yield sock


def start_client(name: str, extra_args: list[str], env: dict[str, str]) -> Proc:
    args = [sys.executable, "-m", "fedhive.cli.main", "client", *extra_args]
    args += ["--id", "c1", "--secret", SECRET, "--dataset", "digits", "--partition", "iid", "--part", "1/2"]
    return Proc(name, args, env={"FEDHIVE_BROKER": "", "FEDHIVE_BROKER_URL": "", **env})


def command_line_once_connected(proc: Proc, listener: socket.socket) -> str:
    """The client's command line, read while it holds a connection to the listener."""
    try:
        conn, _ = listener.accept()
    except TimeoutError:
        pytest.fail(f"{proc.name} never connected to the broker URL it was given\n{proc.tail()}")
    with conn:
        cmdline = Path(f"/proc/{proc.popen.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    proc.kill()
    return cmdline


def url(listener: socket.socket) -> str:
    return f"amqp://fedhive:{PASSWORD}@127.0.0.1:{listener.getsockname()[1]}/"


@pytest.mark.parametrize("variable", ["FEDHIVE_BROKER", "FEDHIVE_BROKER_URL"])
def test_a_url_from_the_environment_keeps_the_password_out_of_the_process_list(
    listener: socket.socket, variable: str
) -> None:
    proc = start_client("client", [], {variable: url(listener)})
    cmdline = command_line_once_connected(proc, listener)
    assert "fedhive.cli.main client" in cmdline
    assert PASSWORD not in cmdline
    assert not [line for line in proc.err if PASSWORD in line]


def test_a_url_from_a_file_keeps_the_password_out_of_the_process_list(listener: socket.socket, tmp_path: Path) -> None:
    url_file = tmp_path / "broker-url"
    url_file.write_text(url(listener) + "\n")
    url_file.chmod(0o600)
    proc = start_client("client", ["--broker", str(url_file)], {})
    cmdline = command_line_once_connected(proc, listener)
    assert str(url_file) in cmdline and PASSWORD not in cmdline
    assert not [line for line in proc.err if line.startswith("warning:") and "broker" in line]


def test_a_password_on_the_command_line_still_works_with_one_warning(listener: socket.socket) -> None:
    proc = start_client("client", ["--broker", url(listener)], {})
    cmdline = command_line_once_connected(proc, listener)
    assert PASSWORD in cmdline  # why the warning exists
    proc.finish()
    warnings = [line for line in proc.err if line.startswith("warning:")]
    assert len(warnings) == 1 and "FEDHIVE_BROKER" in warnings[0] and PASSWORD not in warnings[0]
