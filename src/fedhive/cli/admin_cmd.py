"""``fedhive admin``: the platform's people and sites, straight in its database.

Works before ``fedhive serve`` starts and while it runs: both open the same database (``--home``
or ``--db``, as ``serve`` is given them) and the same key that seals site secrets (``HOME/secrets-key``
or ``FEDHIVE_SECRETS_KEY``). A running server notices a revoked or rotated site within its secret
cache's lifetime (30 s).

- ``admin create-admin EMAIL``: the first admin account (no HTTP request can make an admin);
- ``admin site create|list|revoke|rotate``: site credentials for ``fedhive agent --id --secret``
  (``--role combiner``: a remote combiner's, for ``fedhive combiner --agent``);
  with ``--broker-user``, a broker user of the site's own as well (``cli.site_broker_users``);
- ``admin site broker-commands ID``: the ``rabbitmqctl`` commands that create a site's broker user.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError

from fedhive.cli.site_broker_users import (
    SiteBrokerUserOption,
    SiteNamespaceOption,
    SiteVhostOption,
    broker_tool,
    provision,
    site_grant,
    tell_operator,
)
from fedhive.errors import ConfigError
from fedhive.runtime.credentials import write_secret_file
from fedhive.runtime.session_config import validation_message

# The database, the password hashing and the settings are imported where they are used: they pull
# in SQLAlchemy and FastAPI (about a second), and every fedhive command imports this module to
# build its command line.
if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from fedhive.service.settings import Settings

HomeOption = Annotated[Path, typer.Option(help="the server's home folder (as 'fedhive serve --home')")]
DbOption = Annotated[str | None, typer.Option(help="the server's database URL (as 'fedhive serve --db')")]

app = typer.Typer(help="Administer the platform: admin accounts and site credentials.", no_args_is_help=True)
site_app = typer.Typer(help="Site credentials: the ids and secrets 'fedhive agent' signs with.", no_args_is_help=True)
app.add_typer(site_app, name="site")


def _settings(home: Path, db: str | None) -> Settings:
    from fedhive.service.settings import Settings

    try:
        return Settings.from_env(home=home, db_url=db)
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None


@contextmanager
def _unit_of_work(settings: Settings) -> Iterator[Session]:
    """The migrated database (a fresh one is created, as ``serve`` would), one unit of work."""
    from fedhive.storage.database import Database

    settings.home.mkdir(parents=True, exist_ok=True)
    database = Database(settings.database_url())
    try:
        database.upgrade()
        with database.session() as s:
            yield s
    finally:
        database.dispose()


@app.command("create-admin", help="Create an admin account (the first one, or another).")
def create_admin(
    email: Annotated[str, typer.Argument(help="the admin's e-mail (their sign-in name)")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from the first line of stdin")
    ] = False,
    home: HomeOption = Path(".fedhive"),
    db: DbOption = None,
) -> None:
    if "@" not in email or len(email) > 254:
        raise ConfigError(f"{email!r} is not an e-mail address")
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    from fedhive.api.security import AuthError, check_password_rules, hash_password
    from fedhive.storage import users_repo
    from fedhive.storage.database import AlreadyExists
    from fedhive.storage.models import Role

    try:
        check_password_rules(password)
    except AuthError as exc:
        raise ConfigError(f"password: {exc}") from None
    settings = _settings(home, db)
    hashed = hash_password(password, rounds=settings.bcrypt_rounds)
    try:
        with _unit_of_work(settings) as s:
            user = users_repo.create_user(s, email, hashed, role=Role.ADMIN)
            user_id = user.id
    except AlreadyExists as exc:
        raise ConfigError(str(exc)) from None
    print(f"admin {users_repo.normalise_email(email)} created (user id {user_id}); sign in with that password")


# Where a new secret goes (create, rotate): shown once, on stdout or in a 0600 file.
SecretJsonOption = Annotated[bool, typer.Option("--json", help="one JSON line: client_id, secret, name")]
SecretFileOption = Annotated[
    Path | None, typer.Option("--out-file", help="write the id and secret here (JSON, mode 0600), not stdout")
]


@site_app.command("create", help="Create a site's id and secret; the secret is shown once.")
def create_site(
    name: Annotated[str, typer.Argument(help="a name for people (e.g. hospital-a)")],
    site_id: Annotated[str | None, typer.Option("--id", help="the site's id [default: a random one]")] = None,
    count: Annotated[
        int, typer.Option(help="create this many sites, named NAME-001, NAME-002, ... (with --json or --out-file)")
    ] = 1,
    as_json: SecretJsonOption = False,
    out_file: SecretFileOption = None,
    home: HomeOption = Path(".fedhive"),
    db: DbOption = None,
    broker_user: SiteBrokerUserOption = None,
    namespace: SiteNamespaceOption = "fedhive",
    vhost: SiteVhostOption = "/",
    role: Annotated[
        str, typer.Option(help="site (an agent) or combiner (a remote 'fedhive combiner --agent' for serve)")
    ] = "site",
) -> None:
    rabbitmqctl = broker_tool(broker_user)
    if role not in ("site", "combiner"):
        raise ConfigError(f"--role must be 'site' or 'combiner', not {role!r}")
    if not name.strip() or len(name) > 250:
        raise ConfigError("the site's name must have 1 to 250 characters")
    if site_id is not None and not _valid_id(site_id):
        raise ConfigError(f"--id {site_id!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    if site_id is not None and broker_user is not None:
        site_grant(site_id, namespace, vhost, role)  # an id a broker user cannot be named after: refused now
    if not 1 <= count <= 10_000:
        raise ConfigError(f"--count must be between 1 and 10000, got {count}")
    if count > 1 and (site_id is not None or not (as_json or out_file)):
        raise ConfigError("--count N takes --json or --out-file (one JSON line per site), and no --id")
    if out_file is not None and out_file.exists():
        raise ConfigError(f"--out-file: {out_file} exists; remove it first")
    from fedhive.storage import users_repo
    from fedhive.storage.database import AlreadyExists

    settings = _settings(home, db)
    names = [name] if count == 1 else [f"{name}-{i:0{len(str(count))}d}" for i in range(1, count + 1)]
    created: list[tuple[str, str, str, dict[str, str] | None]] = []  # id, secret, name, broker login
    try:
        with _unit_of_work(settings) as s:  # all or none
            for each in names:
                cid, secret = users_repo.create_client(
                    s, each, box=settings.secret_box(), client_id=site_id, broker_user=broker_user is not None,
                    role=role,
                )  # fmt: skip
                created.append((cid, secret, each, None))
    except AlreadyExists as exc:
        raise ConfigError(str(exc)) from None
    if broker_user is not None:

        def undo(ids: list[str]) -> None:
            with _unit_of_work(settings) as s:
                for cid in ids:
                    users_repo.delete_client(s, cid)

        logins, lines = provision(
            [c[0] for c in created], namespace=namespace, vhost=vhost, rabbitmqctl=rabbitmqctl, undo=undo, role=role
        )
        created = [(c, secret, each, logins[c]) for c, secret, each, _ in created]
        tell_operator(lines)
    if count == 1:
        _show_secret(*created[0], as_json=as_json, out_file=out_file)
    else:
        _show_secrets(created, out_file=out_file)


@site_app.command("list", help="List sites: id, name, status, last heartbeat (never secrets).")
def list_sites(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per site and line")] = False,
    home: HomeOption = Path(".fedhive"),
    db: DbOption = None,
) -> None:
    from fedhive.storage import users_repo

    with _unit_of_work(_settings(home, db)) as s:
        rows = users_repo.list_clients(s, None)
        lines = [
            {
                "client_id": r.id,
                "name": r.name,
                "role": r.role,
                "status": str(r.status),
                "last_heartbeat": r.last_heartbeat.isoformat() if r.last_heartbeat else None,
            }
            for r in rows
        ]
    for line in lines:
        if as_json:
            print(json.dumps(line))
        else:
            print(
                f"{line['client_id']}\t{line['name']}\t{line['status']}\t{line['last_heartbeat'] or '-'}\t"
                f"{line['role']}"
            )


@site_app.command("revoke", help="Delete a site's credentials: its messages are refused from then on.")
def revoke_site(
    site_id: Annotated[str, typer.Argument(help="the site's id")],
    home: HomeOption = Path(".fedhive"),
    db: DbOption = None,
    broker_user: Annotated[
        str | None, typer.Option("--broker-user", help="'rabbitmqctl': delete the site's broker user too")
    ] = None,
) -> None:
    if broker_user not in (None, "rabbitmqctl"):
        raise ConfigError(f"--broker-user is 'rabbitmqctl' (or left out), not {broker_user!r}")
    rabbitmqctl = broker_tool(broker_user)
    from fedhive.storage import users_repo
    from fedhive.storage.database import NotFound

    try:
        with _unit_of_work(_settings(home, db)) as s:
            row = users_repo.get_client(s, site_id)
            login = row.broker_user if row is not None else None
            users_repo.delete_client(s, site_id)
    except NotFound:
        raise ConfigError(f"no site {site_id!r} (see 'fedhive admin site list')") from None
    print(f"revoked {site_id}")
    if login is not None and rabbitmqctl is not None:
        rabbitmqctl.delete(login)
        print(f"deleted broker user {login}")
    elif login is not None:
        typer.echo(f"its broker user remains: rabbitmqctl delete_user {login}", err=True)


@site_app.command(
    "broker-commands", help="Print the rabbitmqctl commands that create a site's broker user (for the operator)."
)
def site_broker_commands(
    site_id: Annotated[str, typer.Argument(help="the site's id (created with --broker-user manual)")],
    namespace: SiteNamespaceOption = "fedhive",
    vhost: SiteVhostOption = "/",
    role: Annotated[str, typer.Option(help="site, or combiner (created with --role combiner)")] = "site",
) -> None:
    if role not in ("site", "combiner"):
        raise ConfigError(f"--role must be 'site' or 'combiner', not {role!r}")
    print("\n".join(site_grant(site_id, namespace, vhost, role).shell_lines()))


@site_app.command("rotate", help="Give a site a new secret (shown once); the old one stops working.")
def rotate_site(
    site_id: Annotated[str, typer.Argument(help="the site's id")],
    as_json: SecretJsonOption = False,
    out_file: SecretFileOption = None,
    home: HomeOption = Path(".fedhive"),
    db: DbOption = None,
) -> None:
    if out_file is not None and out_file.exists():
        raise ConfigError(f"--out-file: {out_file} exists; remove it first")
    from fedhive.storage import users_repo
    from fedhive.storage.database import NotFound

    settings = _settings(home, db)
    try:
        with _unit_of_work(settings) as s:
            secret = users_repo.rotate_client_secret(s, site_id, box=settings.secret_box())
            row = users_repo.get_client(s, site_id)
            name = row.name if row is not None else site_id
    except NotFound:
        raise ConfigError(f"no site {site_id!r} (see 'fedhive admin site list')") from None
    _show_secret(site_id, secret, name, as_json=as_json, out_file=out_file)


def _valid_id(site_id: str) -> bool:
    return 0 < len(site_id) <= 64 and all(c.isalnum() or c in "._-" for c in site_id)


def _entry(cid: str, secret: str, name: str, broker: dict[str, str] | None = None) -> dict[str, str]:
    return {"client_id": cid, "secret": secret, "name": name} | (broker or {})


def _show_secrets(created: list[tuple[str, str, str, dict[str, str] | None]], *, out_file: Path | None) -> None:
    """Many sites' ids and secrets (and broker logins), one JSON line each (what ``fedhive agent
    --virtual N --credentials FILE`` reads: each virtual agent logs in as its own site's broker
    user when the lines carry one, ``cli.agent_logins``)."""
    lines = "".join(json.dumps(_entry(*c)) + "\n" for c in created)
    if out_file is None:
        print(lines, end="")
        return
    try:
        write_secret_file(out_file, lines, overwrite=False)
    except (OSError, FileExistsError) as exc:
        raise ConfigError(
            f"--out-file: cannot write {out_file} ({exc}); revoke the sites and create them again"
        ) from None
    what = "ids, secrets and broker logins" if created[0][3] else "ids and secrets"
    typer.echo(
        f"{len(created)} sites: {what} in {out_file} (mode 0600); 'fedhive agent --virtual N --credentials "
        f"{out_file}' reads it",
        err=True,
    )


def _show_secret(
    cid: str, secret: str, name: str, broker: dict[str, str] | None = None, *, as_json: bool, out_file: Path | None
) -> None:
    line = json.dumps(_entry(cid, secret, name, broker))
    if out_file is not None:
        try:
            write_secret_file(out_file, line + "\n", overwrite=False)
        except (OSError, FileExistsError) as exc:
            raise ConfigError(
                f"--out-file: cannot write {out_file} ({exc}); rotate the secret again ('fedhive admin site rotate "
                f"{cid}') to get a new one"
            ) from None
        typer.echo(f"site {cid}: id and secret in {out_file} (mode 0600)", err=True)
    elif as_json:
        print(line)
    else:
        print(f"site id  {cid}\nsecret   {secret}")
        if broker:
            print(f"broker   user {broker['broker_user']} password {broker['broker_password']}")
        typer.echo(
            "give them to the site (fedhive agent --id ID, secret in FEDHIVE_CLIENT_SECRET); the secret is not "
            "shown again",
            err=True,
        )
