"""``fedhive clients add|list|remove``: the identities the coordinator accepts messages from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fedhive.errors import ConfigError
from fedhive.runtime.credentials import DEFAULT_STORE, CredentialStore

StoreOption = Annotated[
    Path,
    typer.Option("--store", envvar="FEDHIVE_CLIENT_STORE", help="the coordinator's client store (JSON, mode 0600)"),
]

app = typer.Typer(help="Manage client identities (ids and signing secrets).", no_args_is_help=True)


@app.command(help="Create a client id and secret; prints them once, for the client's --id and --secret.")
def add(
    name: Annotated[str, typer.Argument(help="a name for the client (letters, digits, '.', '_', '-')")],
    count: Annotated[int, typer.Option(help="create this many clients, named NAME-01, NAME-02, ...")] = 1,
    store: StoreOption = Path(DEFAULT_STORE),
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per client and line")] = False,
) -> None:
    if not 1 <= count <= 100_000:
        raise ConfigError(f"--count must be between 1 and 100000, got {count}")
    creds = CredentialStore(store)
    width = len(str(count))
    # Zero-padded numbers keep the ids' sorted order equal to the creation order, which is the
    # order demo parts are handed out in (``fedhive client --virtual``).
    names = [name] if count == 1 else [f"{name}-{i:0{width}d}" for i in range(1, count + 1)]
    for n in names:
        client_id, secret = creds.add(n)
        if as_json:
            print(json.dumps({"client_id": client_id, "secret": secret, "name": n}))
        else:
            print(f"client id  {client_id}\nsecret     {secret}")
    if not as_json:
        typer.echo(
            f"stored in {store}. Give each client its id and secret (fedhive client --id ID --secret SECRET); "
            "they are not shown again.",
            err=True,
        )


@app.command("list", help="List client ids and names (never secrets).")
def list_clients(store: StoreOption = Path(DEFAULT_STORE)) -> None:
    for record in CredentialStore(store).list():
        print(f"{record.client_id}\t{record.name}\t{record.created_at}")


@app.command(help="Delete a client: its messages are rejected from then on, even mid-session.")
def remove(
    client_id: Annotated[str, typer.Argument(help="the id 'fedhive clients add' printed")],
    store: StoreOption = Path(DEFAULT_STORE),
) -> None:
    if not CredentialStore(store).remove(client_id):
        raise ConfigError(f"no client {client_id!r} in {store}")
    print(f"removed {client_id}")
