"""One RabbitMQ user per client, with exactly the rights a client needs (docs/security.md,
"Broker isolation").

A client's broker user is named like the client and may, in the namespace's vhost:

- publish to the up exchange (``{ns}.up``, a topic exchange), only under routing keys whose
  SENDER word is its own id (a topic permission), and to no other exchange;
- consume from (and purge) its own queue ``{ns}.node.{client_id}``, and no other queue;
- configure nothing: it cannot declare, bind or delete exchanges or queues.

The coordinator creates the client's queue and binding, and checks the AMQP ``user_id`` of every
message (which RabbitMQ sets equal to the publishing connection's login) against the user the
client store records for the signed sender (``SenderLogins``).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fedhive.errors import ConfigError
from fedhive.transports.amqp_topology import Names, key_word

PASSWORD_BYTES = 24
_RABBITMQCTL_TIMEOUT_S = 60.0


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


@dataclass(frozen=True, slots=True)
class ClientGrant:
    """The rights of one client's broker user, as RabbitMQ regular expressions."""

    user: str
    vhost: str
    configure: str
    write: str
    read: str
    topic_exchange: str
    topic_write: str
    topic_read: str

    @classmethod
    def of(cls, client_id: str, *, namespace: str = "fedhive", vhost: str = "/") -> ClientGrant:
        names = Names(namespace)
        return cls(
            user=client_id,
            vhost=vhost,
            configure="^$",
            write=f"^{re.escape(names.up_exchange)}$",
            read=f"^{re.escape(names.node_queue(client_id))}$",
            topic_exchange=names.up_exchange,
            # RECIPIENT.SENDER (amqp_topology.up_key): any recipient, itself as the sender.
            topic_write=rf"^[^.]+\.{re.escape(key_word(client_id))}$",
            topic_read="^$",
        )

    def commands(self) -> list[list[str]]:
        """``rabbitmqctl`` argument lists that create the user and its rights; ``add_user``
        reads the password from its standard input, so it never shows in a process list."""
        return [
            ["add_user", self.user],
            ["set_permissions", "-p", self.vhost, self.user, self.configure, self.write, self.read],
            [
                "set_topic_permissions",
                "-p",
                self.vhost,
                self.user,
                self.topic_exchange,
                self.topic_write,
                self.topic_read,
            ],
        ]

    def shell_lines(self, rabbitmqctl: str = "rabbitmqctl") -> list[str]:
        """The commands, for an operator who provisions broker users by hand."""
        lines = []
        for argv in self.commands():
            line = " ".join(shlex.quote(a) for a in [rabbitmqctl, *argv])
            lines.append(f'printf %s "$PASSWORD" | {line}' if argv[0] == "add_user" else line)
        return lines


class Rabbitmqctl:
    """Creates and deletes broker users with ``rabbitmqctl`` on this machine (the broker's, or
    one whose Erlang cookie lets it administer the broker)."""

    def __init__(self, program: str = "rabbitmqctl") -> None:
        path = shutil.which(program)
        if path is None:
            raise ConfigError(
                f"--broker-user: {program} is not on this machine; run 'fedhive clients broker-commands ID' and "
                "give the commands to the broker's operator"
            )
        self._program = path

    def create(self, grant: ClientGrant, password: str) -> None:
        """Create the user with its rights; a user that exists already is refused and left as it
        is, and one created here is deleted again when a later step fails."""
        add_user, *rights = grant.commands()
        self._run(add_user, stdin=password)
        try:
            for argv in rights:
                self._run(argv, stdin=None)
        except ConfigError:
            with contextlib.suppress(ConfigError):
                self.delete(grant.user)
            raise

    def delete(self, user: str) -> None:
        self._run(["delete_user", user], stdin=None)

    def _run(self, argv: list[str], stdin: str | None) -> None:
        try:
            done = subprocess.run(
                [self._program, *argv],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=_RABBITMQCTL_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(f"rabbitmqctl {argv[0]} failed: {exc}") from None
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
            why = lines[-1].strip() if lines else f"exit code {done.returncode}"
            raise ConfigError(f"rabbitmqctl {argv[0]} {argv[-1] if argv[0].endswith('_user') else ''}: {why}".strip())


class SenderLogins:
    """The coordinator's check that a message's signed sender goes with the broker user that
    published it. ``logins()``: client id -> its broker user, for the clients that have one.

    Refused: a client with a broker user whose message came from another login (or none), and a
    message signed by any other sender but published by a client's broker user. Senders without
    a broker user (a shared development login) are not checked: their signature is all there is."""

    def __init__(self, logins: Callable[[], Mapping[str, str]]) -> None:
        self._logins = logins
        self._seen: Mapping[str, str] | None = None
        self._owners: dict[str, str] = {}

    def provisioned(self) -> Iterable[str]:
        return tuple(self._logins())

    def __call__(self, sender: str, login: str | None) -> str | None:
        logins = self._logins()
        if logins is not self._seen:  # the store hands out a new mapping when its file changed
            self._owners = {user: client for client, user in logins.items()}
            self._seen = logins
        expected = logins.get(sender)
        if expected is not None and login != expected:
            return f"published by broker user {login!r}, but {sender}'s broker user is {expected!r}"
        owner = self._owners.get(login) if login is not None else None
        if owner is not None and owner != sender:
            return f"broker user {login!r} belongs to {owner}, not to {sender}"
        return None
