"""Names of what the AMQP transport declares on the broker, and its connection settings.

    {ns}.direct  exchange (direct, durable) --routing key node_id--> {ns}.node.{node_id}
                 one durable queue per node: messages for a node that is offline wait for it
    {ns}.up      exchange (topic, durable) --routing key RECIPIENT.SENDER--> {ns}.node.{recipient}
                 what clients send to the coordinator (or their combiner); only nodes that
                 declare (coordinator, combiners, peers) bind their queue here, with RECIPIENT.*
    {ns}.topic   exchange (direct, durable) --routing key topic----> {ns}.sub.{node_id}.{random}
                 one exclusive, auto-delete queue per subscribing transport, bound once per topic

``{ns}.up`` is an AMQP *topic* exchange so that RabbitMQ's topic permissions can tie the SENDER
word of a routing key to the broker user that publishes it (``broker_users``): a client's user
may publish there with its own id as SENDER and nowhere else. Ids are escaped (``key_word``) so
that a '.' in an id cannot split it into two words, nor a '*' or '#' act as a wildcard.

The topic exchange is of AMQP type *direct*, not *topic*: a direct exchange copies a message to
every queue bound with exactly its key, which is precisely ``MemoryTransport``'s semantics, whereas
an AMQP topic exchange would treat ``*`` and ``#`` in a subscription as wildcards.

This module holds no broker client code (only ``amqp.py`` imports aio-pika), so it can be used and
tested without one.
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass
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
    def topic_exchange(self) -> str:
        return f"{self.namespace}.topic"

    def node_queue(self, node_id: str) -> str:
        return check_name(f"{self.namespace}.node.{node_id}", "queue name")

    def subscriber_queue(self, node_id: str) -> str:
        # Named by us rather than by the broker so that a reconnect re-declares the same queue.
        return check_name(f"{self.namespace}.sub.{node_id}.{uuid.uuid4().hex[:12]}", "queue name")


def key_word(node_id: str) -> str:
    """``node_id`` as one word of a topic routing key: no '.', and no wildcard ('*', '#')."""
    return node_id.replace("%", "%25").replace(".", "%2E").replace("*", "%2A").replace("#", "%23")


def up_key(recipient: str, sender: str) -> str:
    """The routing key of a message from ``sender`` to ``recipient`` on the up exchange."""
    return check_name(f"{key_word(recipient)}.{key_word(sender)}", "routing key")


def up_binding(recipient: str) -> str:
    """The binding that takes every sender's messages for ``recipient`` from the up exchange."""
    return check_name(f"{key_word(recipient)}.*", "binding key")


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
