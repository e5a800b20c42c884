"""The ``fedhive`` command. Thin: parse arguments, build objects, cross into asyncio once.

User mistakes (a bad spec, a malformed CSV, a missing file) end with one line on stderr and exit
code 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer

from fedhive.cli import admin_cmd, clients_cmd
from fedhive.cli.agent_cmd import agent
from fedhive.cli.client_cmd import client
from fedhive.cli.combiner_cmd import combiner
from fedhive.cli.coordinator_cmd import coordinator
from fedhive.cli.new_cmd import new
from fedhive.cli.peer_cmd import peer
from fedhive.cli.serve_cmd import serve_cmd
from fedhive.cli.simulate_cmd import simulate
from fedhive.errors import FedhiveError, SessionFailed

app = typer.Typer(
    name="fedhive",
    help="Federated learning: simulate, coordinate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(help="Run a whole federation in this process on the in-memory transport.")(simulate)
app.command(help="Coordinate one session over a broker (RabbitMQ); clients join with 'fedhive client'.")(coordinator)
app.command(help="Take part in a session as a client (or as N virtual clients) over a broker.")(client)
app.command(help="Run a site agent: stay connected and take part in session after session, no restart.")(agent)
app.command(name="serve", help="Serve the platform: REST API, coordinator hub and sessions.")(serve_cmd)
app.command(help="Combine a share of the clients for the coordinator (hierarchical federation) over a broker.")(
    combiner
)
app.command(help="Take part in a decentralised federation (no coordinator) as one peer over a broker.")(peer)
app.command(name="new", help="Create a runnable app project from a template (numpy, torch or sklearn).")(new)
app.add_typer(clients_cmd.app, name="clients")
app.add_typer(admin_cmd.app, name="admin")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log protocol events.")) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main() -> None:
    try:
        app()
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
