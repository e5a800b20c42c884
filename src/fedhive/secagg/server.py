"""The server's side of secure aggregation: it relays, sums and unmasks, and learns only the sum.

Four stages, each collecting one kind of message and then closed by the node that runs the round
(at its deadline, or once everyone answered):

    add_keys*      -> roster()          U1: who advertised keys; the neighbour graph is drawn
    add_shares*    -> routed()          U2: who shared keys (and escrowed its round's pair seeds);
                                        each gets its neighbours' ciphertexts
    add_masked*    -> unmask_request()  U3: who sent a masked input (summed as they come)
    add_unmask*    -> result()          the sum of U3's quantised inputs, masks removed

SecAgg+ (Bell et al. 2020): each client pairs with its ``k`` neighbours only, so each secret the
server rebuilds needs ``threshold`` answers from that client's neighbours (and itself), not from
everyone. A stage that leaves some client with fewer possible holders than that ends the round
with ``SecAggError``, one line naming the client, how many are left and the threshold. The server
holds a running sum, never a client's vector after adding it.
"""

from __future__ import annotations

import os

import numpy as np

from fedhive.secagg import masks, shamir
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.graph import degree
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, Roster, ShareKeys, UnmaskRequest, UnmaskShares
from fedhive.secagg.sizing import default_neighbours, threshold_for

GRAPH_SEED_BYTES = 32


def session_graph_seed() -> bytes:
    """The seed of a session's neighbour graph, drawn by the node that runs its rounds when the
    session starts, after its clients' ids are fixed (they are provisioned, not chosen by the
    clients). Kept for the session, it gives the same clients the same neighbours every round, so
    each pair agrees its session secrets once (``secagg.channel``) instead of meeting new
    neighbours, and paying an X25519 agreement for each, round after round. Every round's seeds
    and masks stay its own (HKDF with the round's context); only who pairs with whom repeats,
    and the chance that a graph is cut by dropouts or exposes a sum to colluders
    (``secagg.sizing``) is the same for a graph kept as for one drawn each round."""
    return os.urandom(GRAPH_SEED_BYTES)


class SecAggServer:
    def __init__(
        self,
        context: bytes,
        vector_length: int,
        threshold_fraction: float,
        *,
        neighbours: int | None = None,
        label: str = "",
        graph_seed: bytes | None = None,
    ) -> None:
        """``neighbours``: each client's ``k`` (None: ``sizing.default_neighbours`` for the number
        of clients that advertise keys); ``threshold_fraction``: the share of ``k`` that unmasks.
        ``graph_seed``: the session's (``session_graph_seed``), so that the same clients keep the
        same neighbours round after round; None draws one for this round alone."""
        if not 0 < threshold_fraction <= 1:
            raise ValueError(f"threshold fraction must be in (0, 1], got {threshold_fraction}")
        if neighbours is not None and neighbours < 1:
            raise ValueError(f"neighbours must be at least 1, got {neighbours}")
        self._context = context
        self._length = vector_length
        self._fraction = threshold_fraction
        self._neighbours = neighbours
        self._label = label or "secure aggregation"
        if graph_seed is not None and len(graph_seed) != GRAPH_SEED_BYTES:
            raise ValueError(f"a graph seed has {GRAPH_SEED_BYTES} bytes, not {len(graph_seed)}")
        self._graph_seed = graph_seed
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._roster: Roster | None = None
        self._sealed: dict[str, dict[str, bytes]] = {}
        self._escrow: dict[str, bytes] = {}  # client -> its round's pair seeds, sealed under its escrow key
        self._shared: frozenset[str] = frozenset()
        self._sum = np.zeros(vector_length, np.uint64)
        self._masked: set[str] = set()
        self._request: UnmaskRequest | None = None
        self._unmask: dict[str, UnmaskShares] = {}

    @property
    def threshold(self) -> int:
        assert self._roster is not None
        return self._roster.threshold

    @property
    def neighbours(self) -> int:
        assert self._roster is not None
        return self._roster.neighbours

    def _abort(self, have: int, what: str) -> SecAggError:
        t = self.threshold
        return SecAggError(f"{self._label}: only {have} {what}, fewer than the threshold {t}: round aborted")

    # -- 1. keys ---------------------------------------------------------------------------------
    def add_keys(self, msg: AdvertiseKeys) -> None:
        if self._roster is not None or msg.client in self._keys:
            raise SecAggError(f"keys from {msg.client} out of place")
        self._keys[msg.client] = (msg.c_public, msg.s_public)

    def roster(self) -> Roster:
        if self._roster is None:
            n = len(self._keys)
            if n < 2:
                raise SecAggError(f"{self._label}: {n} client advertised keys; secure aggregation needs at least 2")
            k = degree(n, self._neighbours or default_neighbours(n, self._fraction))
            seed = self._graph_seed or session_graph_seed()
            self._roster = Roster(dict(self._keys), threshold_for(k, self._fraction), k, seed)
        return self._roster

    # -- 2. shares -------------------------------------------------------------------------------
    def add_shares(self, msg: ShareKeys) -> None:
        roster = self._roster
        if roster is None or self._shared or msg.client not in roster.keys or msg.client in self._sealed:
            raise SecAggError(f"shares from {msg.client} out of place")
        if set(msg.sealed) != roster.graph[msg.client]:
            raise SecAggError(f"{msg.client} did not share with exactly its neighbours")
        if len(msg.escrow) != masks.escrow_bytes(roster.neighbours):
            raise SecAggError(f"{msg.client} did not escrow one seed per neighbour")
        self._sealed[msg.client] = dict(msg.sealed)
        self._escrow[msg.client] = msg.escrow

    def routed(self) -> dict[str, dict[str, bytes]]:
        """For each client that shared keys: neighbour -> the ciphertext that neighbour sealed for it.
        Every one of them must keep enough share holders (its neighbours in U2, and itself)."""
        roster = self._roster
        assert roster is not None
        shared = self._shared = frozenset(self._sealed)
        for u in sorted(shared):
            holders = roster.graph[u] & shared
            if len(holders) + 1 < roster.threshold:
                raise self._abort(len(holders) + 1, f"holders of {u}'s shares shared keys (its neighbours and itself)")
        return {v: {u: self._sealed[u][v] for u in sorted(roster.graph[v] & shared)} for v in sorted(shared)}

    # -- 3. masked inputs --------------------------------------------------------------------------
    def add_masked(self, msg: MaskedInput) -> None:
        if not self._shared or self._request is not None or msg.client not in self._shared:
            raise SecAggError(f"masked input from {msg.client} out of place")
        if msg.client in self._masked:
            raise SecAggError(f"second masked input from {msg.client}")
        v = msg.vector
        if v.dtype != np.uint64 or v.shape != (self._length,):
            raise SecAggError(f"masked input from {msg.client} is not {self._length} uint64 values")
        self._sum += v  # modulo 2**64
        self._masked.add(msg.client)

    def unmask_request(self) -> UnmaskRequest:
        """Who sent a masked input (survivors) and who shared keys but did not (dropped); fails
        when some client's secret could no longer reach the threshold."""
        if self._request is None:
            roster = self._roster
            assert roster is not None
            survivors = frozenset(self._masked)
            for u in sorted(self._shared):
                holders = (roster.graph[u] | {u}) & survivors
                if len(holders) < roster.threshold:
                    raise self._abort(len(holders), f"holders of {u}'s shares sent a masked input")
            self._request = UnmaskRequest(survivors, self._shared - survivors)
        return self._request

    # -- 4. unmasking ------------------------------------------------------------------------------
    def _holds(self, client: str) -> frozenset[str]:
        """The clients whose shares ``client`` holds: its neighbours that shared keys, and itself."""
        roster = self._roster
        assert roster is not None
        return (roster.graph[client] & self._shared) | {client}

    def add_unmask(self, msg: UnmaskShares) -> None:
        r = self._request
        if r is None or msg.client not in r.survivors or msg.client in self._unmask:
            raise SecAggError(f"unmasking shares from {msg.client} out of place")
        holds = self._holds(msg.client)
        if set(msg.self_mask) != r.survivors & holds or set(msg.mask_key) != r.dropped & holds:
            raise SecAggError(f"{msg.client} did not send exactly the shares asked for")
        self._unmask[msg.client] = msg

    def recoverable(self) -> bool:
        """Whether every secret to rebuild has ``threshold`` answers already: more answers teach
        the server nothing, so a node may close the unmasking stage now instead of waiting for
        survivors that vanished after their masked input."""
        r, roster = self._request, self._roster
        if r is None or roster is None:
            return False
        answered = self._unmask.keys()
        for u in self._shared:
            pool = roster.graph[u] | ({u} if u in r.survivors else set())
            if len(pool & answered) < roster.threshold:
                return False
        return True

    @property
    def survivors(self) -> frozenset[str]:
        """Who is in the sum (after ``unmask_request``)."""
        return self._request.survivors if self._request is not None else frozenset()

    def result(self) -> np.ndarray:
        """The sum of the survivors' quantised inputs (``uint64``, modulo 2**64)."""
        r, roster = self._request, self._roster
        if r is None or roster is None:
            raise SecAggError("unmasking before the masked inputs were closed")
        holders = {u: self._answering(roster, u) for u in sorted(self._shared)}  # all checked before any work
        coefficients: dict[tuple[int, ...], list[int]] = {}

        def recover(u: str, share: int, length: int) -> bytes:
            who = holders[u]
            xs = tuple(roster.point(c) for c in who)
            if xs not in coefficients:
                coefficients[xs] = shamir.lagrange_at_zero(xs)
            ys = [self._unmask[c].self_mask[u] if share == 0 else self._unmask[c].mask_key[u] for c in who]
            try:
                return shamir.combine(ys, coefficients[xs], length)
            except ValueError as exc:
                raise SecAggError(f"{self._label}: {exc}") from None

        total = self._sum.copy()
        masker = masks.Masker(self._length)
        for u in sorted(r.survivors):
            masker.subtract(total, recover(u, 0, masks.SEED_BYTES))
        for u in sorted(r.dropped):
            # This round's seeds of u, and nothing else: its escrow key opens them.
            neighbours = sorted(roster.graph[u])
            try:
                opened = masks.open_escrow(
                    recover(u, 1, masks.KEY_BYTES), self._context, u, self._escrow[u], len(neighbours)
                )
            except SecAggError as exc:
                # Either side may be at fault, and the server cannot tell which: name them all.
                who = ", ".join(holders[u])
                raise SecAggError(
                    f"{self._label}: {exc} (rebuilt from the shares of {who}: "
                    f"{u} escrowed garbage, or one of them sent a wrong share)"
                ) from None
            seeds = dict(zip(neighbours, opened, strict=True))
            for v in sorted(roster.graph[u] & r.survivors):  # v added +mask towards a higher id, -mask to a lower
                seed = seeds[v]
                if v < u:
                    masker.subtract(total, seed)
                else:
                    masker.add(total, seed)
        return total

    def _answering(self, roster: Roster, u: str) -> list[str]:
        """The first ``threshold`` clients (by point) that sent shares of ``u``'s secret."""
        assert self._request is not None
        pool = roster.graph[u] | ({u} if u in self._request.survivors else set())
        answered = sorted((c for c in pool if c in self._unmask), key=roster.point)
        if len(answered) < roster.threshold:
            raise self._abort(len(answered), f"of {u}'s {len(pool)} share holders sent unmasking shares")
        return answered[: roster.threshold]
