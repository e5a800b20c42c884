"""The nodes ``fedhive serve`` runs itself besides the hub (a hierarchical session's combiners),
and the secrets the hub and those nodes sign and check with.

A combiner is trusted infrastructure, as in FEDn: it runs in the server's process, joins the hub's
transport (the broker, or the in-memory network) under a node id of its own, signs to the hub with
a fresh random key that only this process holds (``infrastructure_key``), and signs to and checks
its clients with each site's own secret, which it reads as the hub does. The hub's codec asks
``secret_of``, which knows these keys besides the sites' secrets.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fedhive.core.signing import Verifier
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.networked import BrokerSettings
from fedhive.transports.base import Transport
from fedhive.transports.memory import MemoryNetwork
from fedhive.transports.wire_codec import WireCodec

SecretOf = Callable[[str], bytes | None]


class ServiceNodes:
    def __init__(
        self, site_secret: SecretOf, *, network: MemoryNetwork | None = None, broker: BrokerSettings | None = None
    ) -> None:
        if (network is None) == (broker is None):
            raise ValueError("ServiceNodes: give the in-memory network or the broker, one of them")
        self.site_secret = site_secret
        self._network = network
        self._broker = broker
        self._keys: dict[str, bytes] = {}  # node id -> its key, while the node runs

    def secret_of(self, node: str) -> bytes | None:
        """For the hub's codec: a node of ours, else a site."""
        return self._keys.get(node) or self.site_secret(node)

    def connect(self, node_id: str) -> Transport:
        """A transport (not yet started) for a node of ours; its key lives until ``forget``."""
        if node_id in self._keys:
            raise ValueError(f"node {node_id!r} is running already")
        key = self._keys[node_id] = secrets.token_bytes(32)
        if self._network is not None:
            return self._network.connect(node_id)
        assert self._broker is not None

        def secret(node: str) -> bytes | None:
            return key if node == COORDINATOR_ID else self.site_secret(node)

        # S3: its clients get presigned URLs from it, never credentials (as ``fedhive combiner``);
        # its queue goes when it does: its id is the session's, never used again.
        codec = WireCodec(secret, Verifier(secret), self._broker.artifacts, grants_uploads=True)
        return self._broker.transport(node_id, codec, ephemeral=True)

    def forget(self, node_id: str) -> None:
        self._keys.pop(node_id, None)
