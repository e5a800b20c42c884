"""``--broker``: the broker's URL, kept out of the process list.

Any user of a machine can read every process's command line (``ps``, ``/proc/PID/cmdline``), so a
password in ``--broker amqp://user:password@host/`` is everyone's. The URL may come instead from
the environment (``FEDHIVE_BROKER`` or ``FEDHIVE_BROKER_URL``, which only the process's owner can
read) or from a file: ``--broker PATH`` (or ``FEDHIVE_BROKER=PATH``) reads the URL from PATH, which
should be readable by its owner only (mode 0600). A password given on the command line still works,
with one warning on stderr (none for RabbitMQ's public default, guest:guest).
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from fedhive.errors import ConfigError

ENV_VARS = ["FEDHIVE_BROKER", "FEDHIVE_BROKER_URL"]
# RabbitMQ's built-in account (it may only log in from the broker's own machine): documented
# everywhere, so nothing to keep secret and no warning.
RABBITMQ_DEFAULT_LOGIN = ("guest", "guest")


def _read_url_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not text"
        raise ConfigError(f"--broker: {path} is neither an amqp:// URL nor a readable file ({reason})") from None
    if "://" not in text:
        raise ConfigError(f"--broker: the file {path} holds no broker URL (amqp://user:password@host:5672/)")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        typer.echo(f"warning: {path} holds the broker's URL and others may read it; run: chmod 600 {path}", err=True)
    return text


def resolve_broker(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """The URL ``--broker`` stands for: the value itself, or the content of the file it names."""
    if value is None:
        return None
    if "://" not in value:
        return _read_url_file(Path(value).expanduser())
    # By name: typer carries its own copy of click, whose ParameterSource is not click's.
    source = ctx.get_parameter_source(param.name) if param.name else None
    parts = urlsplit(value)
    secret = parts.password and (parts.username, parts.password) != RABBITMQ_DEFAULT_LOGIN
    if source is not None and source.name == "COMMANDLINE" and secret:
        typer.echo(
            "warning: the broker password on the command line can be read by every user of this machine; "
            f"pass the URL in {ENV_VARS[0]} or in a file of mode 0600 (--broker FILE)",
            err=True,
        )
    return value


_HELP = "amqp://user:password@host:5672/ (or amqps://), or a file (mode 0600) holding it; keep passwords in the env"
BrokerOption = Annotated[str, typer.Option("--broker", envvar=ENV_VARS, callback=resolve_broker, help=_HELP)]
# ``fedhive serve`` reads FEDHIVE_BROKER_URL only, as it did before (its settings are FEDHIVE_<FIELD>).
OptionalBrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker", envvar=ENV_VARS[1], callback=resolve_broker, help=_HELP + "; default: in-process transport"
    ),
]
