"""Each virtual agent's own broker login, for ``fedhive agent --virtual N --credentials FILE``.

``fedhive admin site create NAME --count N --broker-user ... --out-file FILE`` writes, per site,
its id, secret, broker user and broker password (mode 0600). When the sites in FILE carry broker
logins, each virtual agent logs in to RabbitMQ as its own site's user: ``--broker`` then gives
only where the broker is (``amqp://host:5672/vhost``, any login in it is replaced), and the
passwords never appear on a command line. Without broker logins in FILE, every virtual agent
uses the one ``--broker`` URL, as before (a shared development login).
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import typer

from fedhive.cli.credentials_file import credential_entries
from fedhive.errors import ConfigError


@dataclass(frozen=True, slots=True)
class BrokerLogin:
    user: str
    password: str = field(repr=False)  # never in a log line or an error


def read_broker_logins(path: Path, site_ids: Sequence[str]) -> dict[str, BrokerLogin]:
    """Site id -> its broker login, for ``site_ids`` (all of them or none: a site left on the
    shared login would be refused by a server that records a broker user for it, and one given
    a login the server does not know would publish unchecked)."""
    entries = credential_entries(path)
    logins: dict[str, BrokerLogin] = {}
    for site_id in site_ids:
        entry = entries.get(site_id, {})
        user, password = entry.get("broker_user"), entry.get("broker_password")
        if user is None and password is None:
            continue
        if not isinstance(user, str) or not user or not isinstance(password, str) or not password:
            raise ConfigError(f"{path}: site {site_id} has a broker user without a password (or the reverse)")
        logins[site_id] = BrokerLogin(user, password)
    if logins and len(logins) != len(site_ids):
        lacking = next(s for s in site_ids if s not in logins)
        raise ConfigError(
            f"{path}: site {lacking} has no broker login but others do; give every site one "
            "('fedhive admin site create --broker-user') or none"
        )
    if logins and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(f"warning: {path} holds broker passwords and others may read it; run: chmod 600 {path}", err=True)
    return logins


def with_login(url: str, login: BrokerLogin) -> str:
    """``url`` logging in as ``login`` (whatever user and password it named before)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError("--broker: expected amqp://host:5672/vhost (a host, and a port that is a number)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    userinfo = f"{quote(login.user, safe='')}:{quote(login.password, safe='')}"
    return urlunsplit((parts.scheme, f"{userinfo}@{host}{port}", parts.path, parts.query, parts.fragment))


def agent_broker_urls(url: str, site_ids: Sequence[str], credentials: Path | None) -> list[str]:
    """The URL each agent logs in with: its own site's login when ``credentials`` carries them,
    else ``url`` for all."""
    logins = read_broker_logins(credentials, site_ids) if credentials is not None else {}
    return [with_login(url, logins[s]) if logins else url for s in site_ids]
