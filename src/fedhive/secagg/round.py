"""One secure sum among clients that live in this process, the server's part included.

The clients and the server are the same state machines a networked round would use; here each
message is handed over by a method call instead of a transport. Keys and shares are exchanged
first (they do not depend on the updates), so that each client can mask and submit its update as
soon as it is trained, and the server adds it to its running sum at once: one update is alive at
a time, as in the plain simulation.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Collection, MutableMapping, Sequence

import numpy as np

from fedhive.secagg.channel import ChannelKeys
from fedhive.secagg.client import SecAggClient
from fedhive.secagg.server import SecAggServer


def round_context(session_id: str, round: int, attempt: int) -> bytes:
    """What binds every key, seed and ciphertext of a round to that round (and attempt)."""
    return json.dumps(["fedhive-secagg", session_id, round, attempt]).encode()


class LocalSecureSum:
    def __init__(
        self,
        client_ids: Sequence[str],
        context: bytes,
        vector_length: int,
        threshold_fraction: float,
        label: str,
        *,
        neighbours: int | None = None,
        channels: MutableMapping[str, ChannelKeys] | None = None,
        graph_seed: bytes | None = None,
    ) -> None:
        """Advertise keys and share them among each client's ``neighbours`` (None: the default for
        their number, ``sizing.default_neighbours``); raises ``SecAggError`` when fewer than 2
        clients take part. ``channels``: each client's ``c`` key pair kept for the session (a
        client missing from it gets one, added); None: every client makes one for this round.
        ``graph_seed``: the session's neighbour graph (``server.session_graph_seed``); None: this
        round's own."""
        if channels is None:
            channels = {}
        for c in client_ids:
            if c not in channels:
                channels[c] = ChannelKeys()
        self.clients = {c: SecAggClient(c, context, channels[c]) for c in client_ids}
        self.server = SecAggServer(
            context, vector_length, threshold_fraction, neighbours=neighbours, label=label, graph_seed=graph_seed
        )
        for client in self.clients.values():
            self.server.add_keys(client.advertise())
        roster = self.server.roster()
        for client in self.clients.values():
            self.server.add_shares(client.share_keys(roster))
        self._routed = self.server.routed()
        self.submitted: list[str] = []
        self._adding = threading.Lock()

    @property
    def threshold(self) -> int:
        return self.server.threshold

    @property
    def neighbours(self) -> int:
        return self.server.neighbours

    def submit(self, client_id: str, vector: np.ndarray) -> None:
        """``client_id`` masks its quantised update; the server adds it to the sum. Different
        clients may submit from different threads at once (``secagg.pipeline``): each masks on
        its own, and the server's running sum takes one at a time."""
        masked = self.clients[client_id].masked_input(self._routed[client_id], vector)
        with self._adding:
            self.server.add_masked(masked)
            self.submitted.append(client_id)

    def finish(self, gone: Collection[str] = ()) -> np.ndarray:
        """The unmasked sum of every submitted vector; the clients in ``gone`` (dropped out after
        submitting) send no unmasking shares. ``SecAggError`` when some client's secret has fewer
        than the threshold of share holders left."""
        request = self.server.unmask_request()
        for c in sorted(request.survivors - set(gone)):
            self.server.add_unmask(self.clients[c].unmask(request))
        return self.server.result()
