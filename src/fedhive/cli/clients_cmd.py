"""``fedhive clients add|list|remove``: the identities the coordinator accepts messages from."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedhive.errors import ConfigError
from fedhive.runtime.credentials import DEFAULT_STORE, CredentialStore, write_secret_file
from fedhive.transports.broker_users import BrokerGrant, Rabbitmqctl, new_password

StoreOption = Annotated[
    Path,
    typer.Option("--store", envvar="FEDHIVE_CLIENT_STORE", help="the coordinator's client store (JSON, mode 0600)"),
]

BrokerUserOption = Annotated[
    str | None,
    typer.Option(
        "--broker-user",
        help="give each client a broker user of its own: 'rabbitmqctl' creates it (on the broker's machine), "
        "'manual' only records it and prints the rabbitmqctl commands to run (docs/security.md)",
    ),
]
NamespaceOption = Annotated[
    str,
    typer.Option(help="AMQP namespace the coordinator uses (the user's rights name it)", envvar="FEDHIVE_NAMESPACE"),
]
VhostOption = Annotated[str, typer.Option(help="RabbitMQ virtual host of the federation")]
RoleOption = Annotated[
    str,
    typer.Option(
        help="'client'; 'combiner' for a combiner of a hierarchical federation (its broker user may publish up "
        "to the coordinator and down to the clients the coordinator assigns it, and read its own queue); 'host' for "
        "a client host (fedhive client --virtual N --host ID; its broker user publishes for the clients added "
        "with --hosted-by ID and reads its own queue)"
    ),
]

app = typer.Typer(help="Manage client identities (ids and signing secrets).", no_args_is_help=True)


@app.command(help="Create a client id and secret; prints them once, for the client's --id and --secret.")
def add(
    name: Annotated[str, typer.Argument(help="a name for the client (letters, digits, '.', '_', '-')")],
    count: Annotated[int, typer.Option(help="create this many clients, named NAME-01, NAME-02, ...")] = 1,
    store: StoreOption = Path(DEFAULT_STORE),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per client and line")] = False,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out-file",
            help="write the ids and secrets here instead (JSON lines, mode 0600); an existing file is refused",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="let --out-file replace an existing file")] = False,
    broker_user: BrokerUserOption = None,
    namespace: NamespaceOption = "fedhive",
    vhost: VhostOption = "/",
    role: RoleOption = "client",
    hosted_by: Annotated[
        str | None,
        typer.Option(
            "--hosted-by",
            help="a host's id (clients add NAME --role host): these clients are answered for by that host, through "
            "its one queue and, if it has one, its broker user",
        ),
    ] = None,
) -> None:
    if broker_user not in (None, "rabbitmqctl", "manual"):
        raise ConfigError(f"--broker-user is 'rabbitmqctl' or 'manual', not {broker_user!r}")
    if role not in ("client", "combiner", "host"):
        raise ConfigError(f"--role is 'client', 'combiner' or 'host', not {role!r} (peers: fedhive peers add)")
    if hosted_by is not None and (broker_user is not None or role != "client"):
        raise ConfigError("--hosted-by clients publish as their host's broker user: no --broker-user or --role")
    rabbitmqctl = Rabbitmqctl() if broker_user == "rabbitmqctl" else None  # missing: refused before anything
    if not 1 <= count <= 100_000:
        raise ConfigError(f"--count must be between 1 and 100000, got {count}")
    if overwrite and out_file is None:
        raise ConfigError("--overwrite goes with --out-file")
    if out_file is not None:
        _check_out_file(out_file, overwrite)
    elif as_json:
        _warn_if_stdout_is_readable_by_others()
    creds = CredentialStore(store)
    width = len(str(count))
    # Zero-padded numbers keep the ids' sorted order equal to the creation order, which is the
    # order demo parts are handed out in (``fedhive client --virtual``).
    names = [name] if count == 1 else [f"{name}-{i:0{width}d}" for i in range(1, count + 1)]
    lines = []
    manual: list[str] = []
    for n in names:
        client_id, secret = creds.add(n, broker_user=broker_user is not None, role=role, hosted_by=hosted_by)
        entry = {"client_id": client_id, "secret": secret, "name": n}
        if broker_user is not None:
            grant = BrokerGrant.of(client_id, role=role, namespace=namespace, vhost=vhost)
            entry |= {"broker_user": grant.user, "broker_password": new_password()}
            if rabbitmqctl is not None:
                _create_broker_user(creds, rabbitmqctl, grant, entry["broker_password"])
            else:
                manual += grant.shell_lines()
        lines.append(json.dumps(entry))
        if out_file is None and not as_json:
            print(f"client id  {client_id}\nsecret     {secret}")
            if broker_user is not None:
                print(f"broker     user {entry['broker_user']} password {entry['broker_password']}")
    if out_file is not None:
        _write_out_file(out_file, lines, overwrite)
        typer.echo(
            f"ids and secrets of {len(lines)} new client(s) in {out_file} (mode 0600); stored in {store}", err=True
        )
    elif as_json:
        print("\n".join(lines))
    else:
        typer.echo(
            f"stored in {store}. Give each client its id and secret (fedhive client --id ID --secret SECRET); "
            "they are not shown again.",
            err=True,
        )
    if manual:
        typer.echo("create the broker users (PASSWORD: each client's broker_password):\n" + "\n".join(manual), err=True)


def _create_broker_user(creds: CredentialStore, rabbitmqctl: Rabbitmqctl, grant: BrokerGrant, password: str) -> None:
    """Create the client's broker user; if that fails, the client is taken out of the store again
    (a client the coordinator expects on a broker user that does not exist would be refused)."""
    try:
        rabbitmqctl.create(grant, password)
    except ConfigError:
        creds.remove(grant.user)
        raise


def _check_out_file(path: Path, overwrite: bool) -> None:
    """Refuse before any client is created: secrets nobody can read back would be lost."""
    if not path.parent.is_dir():
        raise ConfigError(f"--out-file: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out-file: {path} exists; remove it or add --overwrite")


def _write_out_file(path: Path, lines: list[str], overwrite: bool) -> None:
    try:
        write_secret_file(path, "\n".join(lines) + "\n", overwrite=overwrite)
    except FileExistsError:  # appeared since the check: the clients exist, their secrets go nowhere else
        raise ConfigError(
            f"--out-file: {path} appeared meanwhile and was kept; the {len(lines)} new clients are in the store "
            "but their secrets were not written: remove them (fedhive clients remove ID) and add them again"
        ) from None
    except OSError as exc:
        raise ConfigError(f"--out-file: cannot write {path}: {exc.strerror}") from None


def _warn_if_stdout_is_readable_by_others() -> None:
    """``--json > file`` makes a file with the shell's umask (usually 0644): say so, once."""
    try:
        mode = os.fstat(sys.stdout.fileno()).st_mode
    except (OSError, ValueError):  # no real stdout (captured): nothing on disk to warn about
        return
    if stat.S_ISREG(mode) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(
            "warning: the secrets go to a file others may read; use --out-file FILE (mode 0600) instead", err=True
        )


@app.command("list", help="List client ids and names (never secrets).")
def list_clients(store: StoreOption = Path(DEFAULT_STORE)) -> None:
    for record in CredentialStore(store).list():
        print(f"{record.client_id}\t{record.name}\t{record.created_at}")


@app.command(help="Delete a client: its messages are rejected from then on, even mid-session.")
def remove(
    client_id: Annotated[str, typer.Argument(help="the id 'fedhive clients add' printed")],
    store: StoreOption = Path(DEFAULT_STORE),
    broker_user: Annotated[
        str | None, typer.Option("--broker-user", help="'rabbitmqctl': delete the client's broker user too")
    ] = None,
) -> None:
    if broker_user not in (None, "rabbitmqctl"):
        raise ConfigError(f"--broker-user is 'rabbitmqctl', not {broker_user!r}")
    creds = CredentialStore(store)
    user = creds.broker_users().get(client_id)
    if not creds.remove(client_id):
        raise ConfigError(f"no client {client_id!r} in {store}")
    print(f"removed {client_id}")
    if user is not None and broker_user == "rabbitmqctl":
        Rabbitmqctl().delete(user)
        print(f"deleted broker user {user}")
    elif user is not None:
        typer.echo(f"its broker user remains: rabbitmqctl delete_user {user}", err=True)


@app.command(
    "broker-commands",
    help="Print the rabbitmqctl commands that create a client's broker user with its rights (for the broker's "
    "operator); the password is read from $PASSWORD.",
)
def broker_commands(
    client_id: Annotated[str, typer.Argument(help="the client's id")],
    namespace: NamespaceOption = "fedhive",
    vhost: VhostOption = "/",
    role: RoleOption = "client",
) -> None:
    if role not in ("client", "combiner", "host"):
        raise ConfigError(
            f"--role is 'client', 'combiner' or 'host', not {role!r} (peers: fedhive peers broker-commands)"
        )
    print("\n".join(BrokerGrant.of(client_id, role=role, namespace=namespace, vhost=vhost).shell_lines()))
