"""The ``fedhive`` command. Thin: parse arguments, build objects, cross into asyncio once.

User mistakes (a bad spec, a malformed CSV, a missing file) end with one line on stderr and exit
code 2, never a traceback.

Each command lives in a module of its own, imported only when that command runs: ``fedhive
simulate`` does not pay for the platform, the broker client or the agent (about 60 ms of a short
run, and every one of a federation's processes starts through here). ``fedhive --help`` and
anything that is not a command name import them all.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NamedTuple

import typer

from fedhive.cli.fast_exit import exit_now, is_entry_point
from fedhive.core.collector import collector_paused
from fedhive.errors import FedhiveError, SessionFailed


class _Command(NamedTuple):
    module: str  # under fedhive.cli
    attr: str  # a function (a command) or a typer.Typer (a group of commands)
    help: str | None  # a group's help is its own


COMMANDS: dict[str, _Command] = {
    "simulate": _Command(
        "simulate_cmd", "simulate", "Run a whole federation in this process on the in-memory transport."
    ),
    "coordinator": _Command(
        "coordinator_cmd",
        "coordinator",
        "Coordinate one session over a broker (RabbitMQ); clients join with 'fedhive client'.",
    ),
    "client": _Command(
        "client_cmd", "client", "Take part in a session as a client (or as N virtual clients) over a broker."
    ),
    "agent": _Command(
        "agent_cmd", "agent", "Run a site agent: stay connected and take part in session after session, no restart."
    ),
    "serve": _Command("serve_cmd", "serve_cmd", "Serve the platform: REST API, coordinator hub and sessions."),
    "combiner": _Command(
        "combiner_cmd",
        "combiner",
        "Combine a share of the clients for the coordinator (hierarchical federation) over a broker.",
    ),
    "peer": _Command(
        "peer_cmd", "peer", "Take part in a decentralised federation (no coordinator) as one peer over a broker."
    ),
    "new": _Command("new_cmd", "new", "Create a runnable app project from a template (numpy, torch or sklearn)."),
    "clients": _Command("clients_cmd", "app", None),
    "peers": _Command("peers_cmd", "app", None),
    "admin": _Command("admin_cmd", "app", None),
}


def _verbose(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log protocol events.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def build_app(names: Sequence[str] | None = None) -> typer.Typer:
    """The command line with the commands ``names`` (default: all), in the order of ``COMMANDS``."""
    cli = typer.Typer(
        name="fedhive",
        help="Federated learning: simulate, coordinate, serve.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    cli.callback()(_verbose)  # a callback keeps the group a group even with one command registered
    for name, command in COMMANDS.items():
        if names is not None and name not in names:
            continue
        target = getattr(importlib.import_module(f"fedhive.cli.{command.module}"), command.attr)
        if isinstance(target, typer.Typer):
            cli.add_typer(target, name=name)
        else:
            cli.command(name=name, help=command.help)(target)
    return cli


def command_named(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs (the first word that is not an option), if it is one of ours."""
    word = next((a for a in argv if not a.startswith("-")), None)
    return word if word in COMMANDS else None


def __getattr__(name: str) -> typer.Typer:
    # ``from fedhive.cli.main import app``: the whole command line, for tests and embedding.
    if name == "app":
        return build_app()
    raise AttributeError(name)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    named = command_named(args)
    with collector_paused():  # fedhive's own imports (core.collector)
        cli = build_app([named] if named is not None else None)
    try:
        cli(args=args, prog_name="fedhive")
    except SystemExit as exc:
        # A simulation's process ends here: its interpreter's teardown took longer than a short
        # run's own work (fast_exit). Not when a test calls main() in its own process.
        if named == "simulate" and is_entry_point(main):
            exit_now(exc.code)
        raise
    except SessionFailed as exc:
        print(f"error: session failed: {exc.reason}", file=sys.stderr)
        sys.exit(1)
    except FedhiveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
