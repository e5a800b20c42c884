"""Broker users of sites, for ``fedhive admin site create|revoke|broker-commands --broker-user``.

A site given a broker user of its own logs in to RabbitMQ as that user (named like the site), with
exactly the rights of the roles ``fedhive serve`` gives sites (``broker_users.BrokerGrant.site``):
a client of star sessions, a follower of the server's combiners, a peer of decentralised sessions.
A remote combiner (``--role combiner``) gets a combiner's rights instead (``BrokerGrant.combiner``):
the server declares and binds its queue, and opens the way down from it to a site only while a
session has the site assigned to it (``service.remote_combiners``).
The database records that it has one (``clients.broker_user``), which is how the server knows to
declare its queue and to refuse its messages published by any other login.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated

import typer

from fedhive.errors import ConfigError
from fedhive.transports.broker_users import BrokerGrant, Rabbitmqctl, new_password

SiteBrokerUserOption = Annotated[
    str | None,
    typer.Option(
        "--broker-user",
        help="give each site a broker user of its own, named like the site: 'rabbitmqctl' creates it (on the "
        "broker's machine), 'manual' records it and prints the rabbitmqctl commands to run (docs/security.md)",
    ),
]
SiteNamespaceOption = Annotated[
    str,
    typer.Option(help="the AMQP namespace of 'fedhive serve' (the user's rights name it)", envvar="FEDHIVE_NAMESPACE"),
]
SiteVhostOption = Annotated[str, typer.Option(help="the RabbitMQ virtual host 'fedhive serve' uses")]


def broker_tool(how: str | None) -> Rabbitmqctl | None:
    """Checks ``--broker-user`` before anything is created; the tool that creates users, if any."""
    if how not in (None, "rabbitmqctl", "manual"):
        raise ConfigError(f"--broker-user is 'rabbitmqctl' or 'manual', not {how!r}")
    return Rabbitmqctl() if how == "rabbitmqctl" else None  # missing: refused before anything


def site_grant(site_id: str, namespace: str, vhost: str, role: str = "site") -> BrokerGrant:
    """A site's grant (``BrokerGrant.site``), or, for ``role="combiner"`` (a remote ``fedhive
    combiner --agent``), a combiner's (``BrokerGrant.combiner``): its own queue, up to the server
    as itself, down only to the sites the server routes to it for the session it serves."""
    if role == "combiner":
        return BrokerGrant.combiner(site_id, namespace=namespace, vhost=vhost)
    return BrokerGrant.site(site_id, namespace=namespace, vhost=vhost)


def provision(
    site_ids: list[str],
    *,
    namespace: str,
    vhost: str,
    rabbitmqctl: Rabbitmqctl | None,
    undo: Callable[[list[str]], None],
    role: str = "site",
) -> tuple[dict[str, dict[str, str]], list[str]]:
    """A broker user (and password) per site: created with ``rabbitmqctl`` when given, else the
    shell lines for the operator (returned second). When one cannot be created, those made here
    are deleted again and ``undo`` takes the sites out of the database: a site the server expects
    on a broker user that does not exist could never connect."""
    made: dict[str, dict[str, str]] = {}
    lines: list[str] = []
    for site_id in site_ids:
        grant = site_grant(site_id, namespace, vhost, role)
        password = new_password()
        if rabbitmqctl is None:
            lines.extend(grant.shell_lines())
        else:
            try:
                rabbitmqctl.create(grant, password)
            except ConfigError:
                for done in made:
                    with contextlib.suppress(ConfigError):
                        rabbitmqctl.delete(done)
                undo(site_ids)
                raise
        made[site_id] = {"broker_user": grant.user, "broker_password": password}
    return made, lines


def tell_operator(lines: list[str]) -> None:
    if lines:
        typer.echo(
            "create the sites' broker users (PASSWORD: each site's broker_password):\n" + "\n".join(lines), err=True
        )
