"""One RabbitMQ user per node, with exactly the rights its role needs (docs/security.md,
"Broker isolation"). In the namespace's vhost:

- a *client*'s user (named like the client) may publish to the up exchange (``{ns}.up``, a topic
  exchange), only under routing keys whose SENDER word is its own id (a topic permission), and
  consume (and purge) its own queue ``{ns}.node.{client_id}``; it configures nothing.
- a *combiner*'s user may publish to the up exchange only under ``coordinator.COMBINER`` (to the
  coordinator, as itself), to the down exchange only under ``CLIENT.COMBINER`` (which reaches a
  client only while the coordinator has it assigned to this combiner), and consume its own queue;
  it configures nothing: the coordinator declares and binds its queue.
- a *peer*'s user (its login, which a peer's id names: ``amqp_topology.peer_id``) may declare,
  bind and consume only queues named after its peer ids, bind them to the up exchange only under
  its own ids and to the broadcast exchange only under a topic, and publish to both only as
  itself; it may not declare, delete or redeclare an exchange: the federation's operator declares
  them (``Rabbitmqctl.declare_exchanges``).
- a *host*'s user (a client host's, ``fedhive client --virtual N --host ID``, named like the host)
  may publish to the up exchange only as the host itself or as one of its clients, whose ids name
  the host (``amqp_topology.hosted_id``: ``CLIENT:HOST``), and consume its own queue, where the
  coordinator routes what is for any of its clients; it configures nothing.
- a *site*'s user (a ``fedhive agent``'s, named like the site) has a client's rights and a peer's
  whose peer ids name the site: one login for every role ``fedhive serve`` gives the site.

The coordinator creates the queues and bindings of the clients and combiners, and checks the AMQP
``user_id`` of every message (which RabbitMQ sets equal to the publishing connection's login)
against the user the client store records for the signed sender (``SenderLogins``); a peer
checks that the login is the one the sender's peer id names (``peer_sender_check``)."""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from fedhive.errors import ConfigError
from fedhive.transports.amqp_topology import HOSTED_ID_HOST, PEER_ID_LOGIN, Names, key_word, peer_id, peer_owner

PASSWORD_BYTES = 24
_RABBITMQCTL_TIMEOUT_S = 60.0


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


@dataclass(frozen=True, slots=True)
class TopicRights:
    """A topic permission: the routing keys a user may publish (``write``) and bind (``read``)
    with on one topic exchange. Without one, RabbitMQ allows every key: so a user with write or
    read rights on a topic exchange always gets one."""

    exchange: str
    write: str
    read: str


NOTHING = "^$"


@dataclass(frozen=True, slots=True)
class BrokerGrant:
    """The rights of one node's broker user, as RabbitMQ regular expressions."""

    user: str
    vhost: str
    configure: str
    write: str
    read: str
    topics: tuple[TopicRights, ...]

    @classmethod
    def of(cls, node_id: str, *, role: str = "client", namespace: str = "fedhive", vhost: str = "/") -> BrokerGrant:
        """``role``: client, combiner or peer (``node_id`` is then the peer's login)."""
        if role == "client":
            return cls.client(node_id, namespace=namespace, vhost=vhost)
        if role == "combiner":
            return cls.combiner(node_id, namespace=namespace, vhost=vhost)
        if role == "peer":
            return cls.peer(node_id, namespace=namespace, vhost=vhost)
        if role == "site":
            return cls.site(node_id, namespace=namespace, vhost=vhost)
        if role == "host":
            return cls.host(node_id, namespace=namespace, vhost=vhost)
        raise ConfigError(f"a broker user's role is client, combiner, peer, site or host, not {role!r}")

    @classmethod
    def client(cls, client_id: str, *, namespace: str = "fedhive", vhost: str = "/") -> BrokerGrant:
        names = Names(namespace)
        # RECIPIENT.SENDER (amqp_topology.up_key): any recipient, itself as the sender.
        up = TopicRights(names.up_exchange, rf"^[^.]+\.{re.escape(key_word(client_id))}$", NOTHING)
        return cls(client_id, vhost, NOTHING, _one_of(names.up_exchange), _one_of(names.node_queue(client_id)), (up,))

    @classmethod
    def host(cls, host_id: str, *, namespace: str = "fedhive", vhost: str = "/") -> BrokerGrant:
        """A client host's: one queue (its own), and the up exchange as itself or as any id
        ``CLIENT:HOST`` (its clients'), to any recipient; nothing to configure."""
        names, me = Names(namespace), re.escape(key_word(host_id))
        sep = re.escape(HOSTED_ID_HOST)
        up = TopicRights(names.up_exchange, rf"^[^.]+\.(?:{me}|[^.{sep}]+{sep}{me})$", NOTHING)
        return cls(host_id, vhost, NOTHING, _one_of(names.up_exchange), _one_of(names.node_queue(host_id)), (up,))

    @classmethod
    def combiner(
        cls, combiner_id: str, *, namespace: str = "fedhive", vhost: str = "/", upstream: str = "coordinator"
    ) -> BrokerGrant:
        names, me = Names(namespace), re.escape(key_word(combiner_id))
        up = TopicRights(names.up_exchange, f"^{re.escape(key_word(upstream))}\\.{me}$", NOTHING)
        down = TopicRights(names.down_exchange, rf"^[^.]+\.{me}$", NOTHING)
        write = _one_of(names.up_exchange, names.down_exchange)
        return cls(combiner_id, vhost, NOTHING, write, _one_of(names.node_queue(combiner_id)), (up, down))

    @classmethod
    def peer(cls, login: str, *, namespace: str = "fedhive", vhost: str = "/") -> BrokerGrant:
        names = Names(namespace)
        ns = re.escape(namespace)
        peer_ids = f"[0-9a-f]{{32}}{re.escape(PEER_ID_LOGIN + login)}"  # amqp_topology.peer_id
        key_ids = f"[0-9a-f]{{32}}{re.escape(key_word(PEER_ID_LOGIN + login))}"  # the same, as a key word
        queues = rf"{ns}\.node\.{peer_ids}|{ns}\.sub\.{peer_ids}\.[0-9a-f]{{12}}"  # Names.node/subscriber_queue
        exchanges = f"{re.escape(names.up_exchange)}|{re.escape(names.broadcast_exchange)}"
        up = TopicRights(names.up_exchange, rf"^[^.]+\.{key_ids}$", rf"^{key_ids}\.\*$")
        broadcast = TopicRights(names.broadcast_exchange, rf"^[^.]+\.{key_ids}$", r"^[^.*#]+\.\*$")
        both = f"^(?:{exchanges}|{queues})$"
        return cls(login, vhost, f"^(?:{queues})$", both, both, (up, broadcast))

    @classmethod
    def site(cls, site_id: str, *, namespace: str = "fedhive", vhost: str = "/") -> BrokerGrant:
        """A site agent's (``fedhive admin site create --broker-user``), named like the site: a
        client's rights (star sessions; a follower of ``fedhive serve``'s combiners needs no more,
        they reach it through the direct exchange) and a peer's whose peer ids name the site
        (decentralised sessions: the agent's peer id is ``HEX:SITE``)."""
        peer_id(site_id)  # a ConfigError for an id that a peer id cannot name
        client = cls.client(site_id, namespace=namespace, vhost=vhost)
        peer = cls.peer(site_id, namespace=namespace, vhost=vhost)
        (client_up,), (peer_up, broadcast) = client.topics, peer.topics
        up = TopicRights(peer_up.exchange, _either(client_up.write, peer_up.write), peer_up.read)
        write, read = _either(client.write, peer.write), _either(client.read, peer.read)
        return cls(site_id, vhost, peer.configure, write, read, (up, broadcast))

    def commands(self) -> list[list[str]]:
        """``rabbitmqctl`` argument lists that create the user and its rights; ``add_user``
        reads the password from its standard input, so it never shows in a process list."""
        rights = ["set_permissions", "-p", self.vhost, self.user, self.configure, self.write, self.read]
        topics = [
            ["set_topic_permissions", "-p", self.vhost, self.user, t.exchange, t.write, t.read] for t in self.topics
        ]
        return [["add_user", self.user], rights, *topics]

    def shell_lines(self, rabbitmqctl: str = "rabbitmqctl") -> list[str]:
        """The commands, for an operator who provisions broker users by hand."""
        lines = []
        for argv in self.commands():
            line = " ".join(shlex.quote(a) for a in [rabbitmqctl, *argv])
            lines.append(f'printf %s "$PASSWORD" | {line}' if argv[0] == "add_user" else line)
        return lines


ClientGrant = BrokerGrant  # its ``of`` makes a client's grant unless told otherwise


def _one_of(*names: str) -> str:
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$" if len(names) > 1 else f"^{re.escape(names[0])}$"


def _either(*patterns: str) -> str:
    """One regular expression matching what any of the (anchored) ``patterns`` matches."""
    return "|".join(f"(?:{p})" for p in patterns)


def peer_definitions(namespace: str, vhost: str) -> str:
    """The exchanges of a peer federation, as RabbitMQ definitions (``rabbitmqctl
    import_definitions`` reads them): the peers' users may not declare them."""
    names = Names(namespace)
    exchanges = [
        {"name": name, "vhost": vhost, "type": "topic", "durable": True, "auto_delete": False, "internal": False}
        | {"arguments": {}}
        for name in (names.up_exchange, names.broadcast_exchange)
    ]
    return json.dumps({"exchanges": exchanges}, separators=(",", ":"))


def peer_definitions_line(namespace: str, vhost: str, rabbitmqctl: str = "rabbitmqctl") -> str:
    return f"printf %s {shlex.quote(peer_definitions(namespace, vhost))} | {rabbitmqctl} import_definitions"


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

    def create(self, grant: BrokerGrant, password: str) -> None:
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

    def declare_exchanges(self, namespace: str, vhost: str) -> None:
        """Declare a peer federation's exchanges (kept as they are when they exist)."""
        self._run(["import_definitions"], stdin=peer_definitions(namespace, vhost))

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

    def __init__(
        self,
        logins: Callable[[], Mapping[str, str]],
        combiners: Callable[[], Iterable[str]] | None = None,
        hosts: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        self._logins = logins
        self._combiners = combiners or (lambda: ())
        # Hosted client -> its host: their messages are published by the host's broker user,
        # and what is for them goes to the host's queue (they have none of their own).
        self._hosts = hosts or (lambda: {})
        self._seen: Mapping[str, str] | None = None
        self._owners: dict[str, frozenset[str]] = {}  # broker user -> the senders it may publish for

    def provisioned(self) -> Iterable[str]:
        """The nodes with a broker user and a queue the coordinator declares for them (not
        hosted clients: their host's queue takes what is for them)."""
        hosted = self._hosts()
        return tuple(c for c in self._logins() if c not in hosted)

    def host_of(self, client: str) -> str | None:
        """The host whose queue takes what is for ``client``, or None (a queue of its own)."""
        return self._hosts().get(client)

    def relays(self) -> Iterable[str]:
        """The provisioned combiners (their queues are bound to the up exchange too)."""
        return tuple(self._combiners())

    def __call__(self, sender: str, login: str | None) -> str | None:
        logins = self._logins()
        if logins is not self._seen:  # the store hands out a new mapping when its file changed
            owners: dict[str, set[str]] = {}
            for client, user in logins.items():  # a host's user publishes for the host and its clients
                owners.setdefault(user, set()).add(client)
            self._owners = {user: frozenset(senders) for user, senders in owners.items()}
            self._seen = logins
        expected = logins.get(sender)
        if expected is not None and login != expected:
            return f"published by broker user {login!r}, but {sender}'s broker user is {expected!r}"
        owners_of_login = self._owners.get(login) if login is not None else None
        if owners_of_login is not None and sender not in owners_of_login:
            if len(owners_of_login) == 1:
                return f"broker user {login!r} belongs to {next(iter(owners_of_login))}, not to {sender}"
            return f"broker user {login!r} does not publish for {sender}"
        return None


def peer_sender_check(sender: str, login: str | None) -> str | None:
    """A peer's check of every message: its signed sender's id names the broker user that
    published it. Every peer of a federation holds the shared key, so this, and RabbitMQ's own
    check of ``user_id``, is what stops one peer from speaking as another."""
    owner = peer_owner(sender)
    if owner is None:
        return f"peer id {sender[:40]!r} names no broker login"
    if owner != login:
        return f"published by broker user {login!r}, but the peer id names {owner!r}"
    return None
