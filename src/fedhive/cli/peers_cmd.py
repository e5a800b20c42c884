"""``fedhive peers add|remove|broker-commands``: broker users for the peers of a decentralised
federation, one per peer (docs/security.md, "Broker isolation").

A peer federation has no coordinator to declare the broker's exchanges, and the peers' users may
not declare them (they could delete them too): ``fedhive peers add --broker-user rabbitmqctl``
declares them (``rabbitmqctl import_definitions``, which keeps existing ones as they are) and
creates the users. Peers hold no entry in a client store: they sign with the federation's shared
secret, and their broker login is their identity on the broker (a peer's id names it).
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Annotated

import typer

from fedhive.cli.clients_cmd import NamespaceOption, VhostOption, _check_out_file, _write_out_file
from fedhive.errors import ConfigError
from fedhive.transports.broker_users import BrokerGrant, Rabbitmqctl, new_password, peer_definitions_line

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")  # as client names: no ':' (amqp_topology.peer_id)

app = typer.Typer(help="Manage the broker users of a decentralised federation's peers.", no_args_is_help=True)


@app.command(help="Create broker users for peers (and declare the federation's exchanges); prints each once.")
def add(
    name: Annotated[str, typer.Argument(help="a name for the peer (letters, digits, '.', '_', '-')")],
    broker_user: Annotated[
        str,
        typer.Option(
            "--broker-user",
            help="'rabbitmqctl' creates the users and exchanges (on the broker's machine), 'manual' prints the "
            "rabbitmqctl commands to run",
        ),
    ],
    count: Annotated[int, typer.Option(help="create this many, named NAME-01, NAME-02, ...")] = 1,
    out_file: Annotated[
        Path | None,
        typer.Option("--out-file", help="write the users and passwords here instead (JSON lines, mode 0600)"),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="let --out-file replace an existing file")] = False,
    namespace: NamespaceOption = "fedhive",
    vhost: VhostOption = "/",
) -> None:
    if broker_user not in ("rabbitmqctl", "manual"):
        raise ConfigError(f"--broker-user is 'rabbitmqctl' or 'manual', not {broker_user!r}")
    if not _NAME.match(name):
        raise ConfigError(
            f"peer name {name!r}: use 1-48 letters, digits, '.', '_' or '-', starting with one of the first two"
        )
    if not 1 <= count <= 10_000:
        raise ConfigError(f"--count must be between 1 and 10000, got {count}")
    if overwrite and out_file is None:
        raise ConfigError("--overwrite goes with --out-file")
    if out_file is not None:
        _check_out_file(out_file, overwrite)
    rabbitmqctl = Rabbitmqctl() if broker_user == "rabbitmqctl" else None  # missing: refused before anything
    if rabbitmqctl is not None:
        rabbitmqctl.declare_exchanges(namespace, vhost)
    width = len(str(count))
    names = [name] if count == 1 else [f"{name}-{i:0{width}d}" for i in range(1, count + 1)]
    lines: list[str] = []
    manual = [peer_definitions_line(namespace, vhost)]
    for n in names:
        grant = BrokerGrant.peer(f"{n}-{secrets.token_hex(3)}", namespace=namespace, vhost=vhost)
        entry = {"broker_user": grant.user, "broker_password": new_password()}
        if rabbitmqctl is not None:
            rabbitmqctl.create(grant, entry["broker_password"])
        else:
            manual += grant.shell_lines()
        lines.append(json.dumps(entry))
        if out_file is None:
            print(f"broker     user {entry['broker_user']} password {entry['broker_password']}")
    if out_file is not None:
        _write_out_file(out_file, lines, overwrite)
        typer.echo(f"users and passwords of {len(lines)} peer(s) in {out_file} (mode 0600)", err=True)
    if rabbitmqctl is None:
        typer.echo("declare the exchanges and create the users (PASSWORD: each one's password):", err=True)
        typer.echo("\n".join(manual), err=True)


@app.command(help="Delete a peer's broker user (on the broker's machine).")
def remove(user: Annotated[str, typer.Argument(help="the broker user 'fedhive peers add' printed")]) -> None:
    Rabbitmqctl().delete(user)
    print(f"deleted broker user {user}")


@app.command(
    "broker-commands",
    help="Print the rabbitmqctl commands that declare the federation's exchanges and create a peer's broker user "
    "with its rights (for the broker's operator); the password is read from $PASSWORD.",
)
def broker_commands(
    user: Annotated[str, typer.Argument(help="the peer's broker user")],
    namespace: NamespaceOption = "fedhive",
    vhost: VhostOption = "/",
) -> None:
    grant = BrokerGrant.peer(user, namespace=namespace, vhost=vhost)
    print("\n".join([peer_definitions_line(namespace, vhost), *grant.shell_lines()]))
