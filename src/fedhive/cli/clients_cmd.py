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
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out-file",
            help="write the ids and secrets here instead (JSON lines, mode 0600); an existing file is refused",
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="let --out-file replace an existing file")] = False,
) -> None:
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
    for n in names:
        client_id, secret = creds.add(n)
        lines.append(json.dumps({"client_id": client_id, "secret": secret, "name": n}))
        if out_file is None and not as_json:
            print(f"client id  {client_id}\nsecret     {secret}")
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
) -> None:
    if not CredentialStore(store).remove(client_id):
        raise ConfigError(f"no client {client_id!r} in {store}")
    print(f"removed {client_id}")
