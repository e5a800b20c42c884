"""Names of what the AMQP transport declares on the broker, and its connection settings.

    {ns}.direct     exchange (direct, durable) --routing key node_id--> {ns}.node.{node_id}
                    one durable queue per node: messages for a node that is offline wait for it;
                    only the coordinator publishes here
    {ns}.up         exchange (topic, durable) --routing key RECIPIENT.SENDER--> {ns}.node.{recipient}
                    what clients send to the coordinator (or their combiner), combiners to the
                    coordinator, peers to one peer; bound with RECIPIENT.* for the coordinator,
                    combiners and peers only (never a client's queue)
    {ns}.down       exchange (topic, durable) --routing key CLIENT.COMBINER--> {ns}.node.{client}
                    what a combiner sends to its clients: the coordinator binds a client's queue
                    with CLIENT.COMBINER when it assigns the client to that combiner (and unbinds
                    the previous one), so a combiner reaches exactly the clients assigned to it
    {ns}.broadcast  exchange (topic, durable) --routing key TOPIC.SENDER--> {ns}.sub.{node_id}.{random}
                    one exclusive, auto-delete queue per subscribing transport, bound with TOPIC.*

The exchanges a sender publishes to are AMQP *topic* exchanges so that RabbitMQ's topic
permissions can tie the SENDER word of a routing key to the broker user that publishes it
(``broker_users``), and the RECIPIENT word of a binding to the user that binds (a peer binds only
its own id). Ids and topics are escaped (``key_word``) so that a '.' in one cannot split it into
two words, nor a '*' or '#' act as a wildcard: a binding ``TOPIC.*`` takes exactly that topic
from every sender, as ``MemoryTransport`` does.

A hosted client's id names its host (``hosted_id``: ``CLIENT:HOST``). The coordinator sends what
is for a hosted client to its host's queue (routing key HOST on the direct exchange, the client's
id in the ``fedhive-to`` header), so a host of 1000 clients has one queue, and its broker user
publishes up only under keys whose SENDER word is its own id or ends in ``:HOST``.

A peer's id names its broker login (``peer_id``: ``HEX:LOGIN``), so that permissions can tie its
queue names and routing keys to its user, and a receiver can check that the login RabbitMQ
vouches for (``user_id``) is the one the signed sender names (``peer_owner``).

This module holds no broker client code (only ``amqp.py`` imports aio-pika), so it can be used and
tested without one.
"""

from __future__ import annotations

import re
import secrets
import ssl
import uuid
from dataclasses import dataclass
from enum import Enum
from urllib.parse import unquote, urlsplit, urlunsplit

from fedhive.errors import ConfigError

# AMQP "short strings" (queue, exchange names and routing keys) hold at most 255 bytes.
_MAX_NAME_BYTES = 255


@dataclass(frozen=True, slots=True)
class Names:
    """Exchange and queue names of one namespace; namespaces isolate deployments on one broker."""

    namespace: str

    def __post_init__(self) -> None:
        if not self.namespace or self.namespace.startswith("amq."):
            raise ConfigError(f"AMQP namespace {self.namespace!r} must be non-empty and not start with 'amq.'")
        check_name(self.namespace, "namespace")

    @property
    def direct_exchange(self) -> str:
        return f"{self.namespace}.direct"

    @property
    def up_exchange(self) -> str:
        return f"{self.namespace}.up"

    @property
    def down_exchange(self) -> str:
        return f"{self.namespace}.down"

    @property
    def broadcast_exchange(self) -> str:
        return f"{self.namespace}.broadcast"

    def node_queue(self, node_id: str) -> str:
        return check_name(f"{self.namespace}.node.{node_id}", "queue name")

    def subscriber_queue(self, node_id: str) -> str:
        # Named by us rather than by the broker so that a reconnect re-declares the same queue.
        return check_name(f"{self.namespace}.sub.{node_id}.{uuid.uuid4().hex[:12]}", "queue name")


class Role(Enum):
    """What a node may do on the broker (docs/security.md, "Broker isolation").

    COORDINATOR declares every exchange, its own queue and those of the nodes it provisioned,
    binds them, and publishes through the direct exchange. CLIENT, COMBINER and PEER never
    declare an exchange (their broker users may not): they wait for the exchanges, and a PEER
    declares and binds only its own queues. A login that may configure (a shared development
    login) creates what a CLIENT, COMBINER or PEER waits for itself."""

    COORDINATOR = "coordinator"
    CLIENT = "client"
    COMBINER = "combiner"
    PEER = "peer"


# Between a peer id's random part and its login: in no user name fedhive makes, and (unlike most
# punctuation) allowed in an AMQP queue name, which a peer's queue names take its id into.
PEER_ID_LOGIN = ":"
_PEER_LOGIN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PEER_RANDOM = re.compile(r"[0-9a-f]{32}")


def peer_id(login: str, random_part: str | None = None) -> str:
    """A fresh peer id that names ``login``: 32 random hex digits first, so that ids sort (and
    peers seed) in random order whoever logs in, then ``:LOGIN``. ``random_part``: the 32 hex
    digits someone else drew (``fedhive serve``, for the peers of its site agents)."""
    if not _PEER_LOGIN.fullmatch(login):
        raise ConfigError(
            f"a peer's broker login ({login[:64]!r}) must be 1-64 letters, digits, '.', '_' or '-': its queue names "
            "take it in"
        )
    if random_part is not None and not _PEER_RANDOM.fullmatch(random_part):
        raise ConfigError(f"a peer id's random part must be 32 lower-case hex digits, not {random_part[:40]!r}")
    return f"{random_part or secrets.token_hex(16)}{PEER_ID_LOGIN}{login}"


def peer_owner(node_id: str) -> str | None:
    """The login a peer id names, or None for an id that names none."""
    _, sep, login = node_id.rpartition(PEER_ID_LOGIN)
    return login if sep and login else None


# A hosted client's id names its host (``hosted_id``: ``CLIENT:HOST``), so that one topic
# permission can let the host's broker user publish as exactly its own clients
# (``broker_users.BrokerGrant.host``). The same separator as a peer id's login.
HOSTED_ID_HOST = PEER_ID_LOGIN
# The header of a message the coordinator routes to a host's queue for one of its clients: which
# client it is for. Only the coordinator may publish to the direct exchange, and the message is
# signed with that client's key, so a wrong header only makes it fail verification at the host.
RECIPIENT_HEADER = "fedhive-to"


def hosted_id(client_id: str, host_id: str) -> str:
    """The id of a client that ``host_id`` answers for: ``CLIENT:HOST``."""
    if HOSTED_ID_HOST in client_id or HOSTED_ID_HOST in host_id:
        raise ConfigError(f"a hosted client's id and its host's may not contain {HOSTED_ID_HOST!r}")
    return f"{client_id}{HOSTED_ID_HOST}{host_id}"


def host_named(client_id: str) -> str | None:
    """The host a hosted client's id names, or None."""
    _, sep, host = client_id.rpartition(HOSTED_ID_HOST)
    return host if sep and host else None


def key_word(node_id: str) -> str:
    """``node_id`` as one word of a topic routing key: no '.', and no wildcard ('*', '#')."""
    return node_id.replace("%", "%25").replace(".", "%2E").replace("*", "%2A").replace("#", "%23")


def up_key(recipient: str, sender: str) -> str:
    """The routing key of a message from ``sender`` to ``recipient`` on the up exchange."""
    return check_name(f"{key_word(recipient)}.{key_word(sender)}", "routing key")


def up_binding(recipient: str) -> str:
    """The binding that takes every sender's messages for ``recipient`` from the up exchange
    (and, with a topic for ``recipient``, every sender's broadcasts on it)."""
    return check_name(f"{key_word(recipient)}.*", "binding key")


broadcast_key = up_key  # TOPIC.SENDER on the broadcast exchange
broadcast_binding = up_binding  # TOPIC.*


def queue_arguments(expires_s: float | None, max_messages: int, max_bytes: int) -> dict[str, int | str]:
    """Arguments of every node queue. Whoever declares a queue (the node itself, or the
    coordinator for a client it provisioned) must give the same ones, or the broker refuses the
    second declaration. A full queue refuses new messages (the sender's publish is nacked) rather
    than dropping the oldest ones, so a flood fills no disk and is noticed by the flooder."""
    arguments: dict[str, int | str] = {
        "x-max-length": max_messages,
        "x-max-length-bytes": max_bytes,
        "x-overflow": "reject-publish",
    }
    if expires_s:
        arguments["x-expires"] = int(expires_s * 1000)
    return arguments


def login_of(url: str) -> str:
    """The broker user a URL logs in as (RabbitMQ's default, guest, when it names none)."""
    return unquote(urlsplit(url).username or "guest")


def check_name(name: str, what: str) -> str:
    """``name`` if the broker accepts it as a queue name or routing key, else ``ConfigError``."""
    if len(name.encode()) > _MAX_NAME_BYTES:
        raise ConfigError(f"AMQP {what} {name[:40]!r}... is longer than {_MAX_NAME_BYTES} bytes")
    return name


def ssl_context_for(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for an ``amqps://`` URL (verifying the broker against ``ca_file``, or the
    system's CAs when it is None); None for ``amqp://``."""
    scheme = urlsplit(url).scheme
    if scheme not in ("amqp", "amqps"):
        raise ConfigError(f"broker URL {redact(url)!r} must start with amqp:// or amqps://")
    if scheme == "amqp":
        if ca_file is not None:
            # A CA file says the user expects TLS; connecting in the clear instead would be a surprise.
            raise ConfigError(f"a CA file ({ca_file}) is set but the broker URL is amqp://; use amqps:// for TLS")
        return None
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConfigError(f"cannot load the CA file {ca_file}: {exc.strerror or exc}") from exc


def redact(url: str) -> str:
    """``url`` with its password replaced, fit for error messages and logs."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not colon:
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***{at}{host}"))
