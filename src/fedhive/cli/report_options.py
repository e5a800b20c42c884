"""``--report-to URL``: show a command-line session on a running ``fedhive serve`` (its dashboard, its API).

The credentials never go on the command line, where every user of the machine reads them (``ps``):
they come from the environment, ``FEDHIVE_REPORT_TOKEN`` (a bearer token from ``POST /auth/signin``)
or ``FEDHIVE_REPORT_EMAIL`` and ``FEDHIVE_REPORT_PASSWORD`` (signed in again when a token
expires), or from a file named by ``--report-credentials`` (or ``FEDHIVE_REPORT_CREDENTIALS``),
readable by its owner only (mode 0600), holding ``KEY=VALUE`` lines with those same keys
(``token``, or ``email`` and ``password``). A URL with a password in it is refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import typer

from fedhive.errors import ConfigError
from fedhive.tracking.platform_report import Login, PlatformReporter

ReportToOption = Annotated[
    str | None,
    typer.Option(
        "--report-to",
        envvar="FEDHIVE_REPORT_TO",
        help="show the session on this running 'fedhive serve' (http(s)://host:port); credentials: "
        "FEDHIVE_REPORT_TOKEN, or FEDHIVE_REPORT_EMAIL and FEDHIVE_REPORT_PASSWORD, or --report-credentials",
    ),
]
ReportCredentialsOption = Annotated[
    Path | None,
    typer.Option(
        "--report-credentials",
        envvar="FEDHIVE_REPORT_CREDENTIALS",
        help="file (mode 0600) of KEY=VALUE lines: token, or email and password, for --report-to",
    ),
]
_LOCAL = ("localhost", "127.0.0.1", "::1")


def _read_file(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"--report-credentials: cannot read {path} ({reason})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(f"warning: {path} holds credentials and others may read it; run: chmod 600 {path}", err=True)
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip().lower() not in ("token", "email", "password"):
            raise ConfigError(f"--report-credentials: {path} line {number}: expected token=, email= or password=")
        values[key.strip().lower()] = value.strip()
    return values


def report_login(credentials: Path | None, env: Mapping[str, str] = os.environ) -> Login:
    """The login for ``--report-to``: the file's, else the environment's; ConfigError if none."""
    if credentials is not None:
        values = _read_file(credentials.expanduser())
        where = str(credentials)
    else:
        names = {
            "token": "FEDHIVE_REPORT_TOKEN",
            "email": "FEDHIVE_REPORT_EMAIL",
            "password": "FEDHIVE_REPORT_PASSWORD",
        }
        values = {key: env[name] for key, name in names.items() if env.get(name)}
        where = "the environment"
    try:
        return Login(values.get("token"), values.get("email"), values.get("password"))
    except ValueError:
        raise ConfigError(
            f"--report-to needs credentials and {where} has none: FEDHIVE_REPORT_TOKEN, or FEDHIVE_REPORT_EMAIL and "
            "FEDHIVE_REPORT_PASSWORD, or a file of mode 0600 (--report-credentials FILE)"
        ) from None


def check_report_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--report-to: {url!r} is not an http:// or https:// URL of a 'fedhive serve'")
    if parts.username or parts.password:
        raise ConfigError("--report-to: no credentials in the URL; see FEDHIVE_REPORT_TOKEN or --report-credentials")
    if parts.scheme == "http" and parts.hostname not in _LOCAL:
        typer.echo(f"warning: credentials for {parts.hostname} go over plain http; use https", err=True)
    return url


def platform_reporter(
    url: str, credentials: Path | None, config: Mapping[str, Any], *, name: str, topology: str, **kwargs: Any
) -> PlatformReporter:
    """Checked before anything connects: a bad URL or missing credentials is one line, exit 2."""
    login = report_login(credentials)
    return PlatformReporter(check_report_url(url), login, config=config, name=name, topology=topology, **kwargs)
