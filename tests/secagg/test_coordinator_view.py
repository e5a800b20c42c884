"""What the server receives from one client is indistinguishable from uniform noise.

Each client's masked input is its quantised update plus a self mask and pairwise masks, all AES-CTR
keystream: for any one vector the server sees, every value modulo 2**64 is equally likely whatever
the update. Checked statistically on a maximally structured update (a constant): a KS test of the
values scaled to [0, 1) and a chi-square test of their low byte. The same tests on the unmasked
quantised update must fail, or they would prove nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedhive.core.params import Params
from fedhive.secagg import FixedPoint, SecAggClient, SecAggServer
from fedhive.secagg.messages import MaskedInput
from fedhive.secagg.round import round_context

LENGTH = 20_000
# Sound masks make every p-value below uniform on [0, 1] (each run draws fresh keys), so a check at
# ALPHA fails a sound run with probability ALPHA: 1e-3 did, once in a CI run (p = 1.2e-5, about
# once in 6,000 such checks here). A mask that cancels, repeats or leaks the update leaves 20,000
# values far from uniform, p far below 1e-12 (the unmasked vectors below), so this still catches it.
ALPHA = 1e-9


class RecordingServer(SecAggServer):
    """The server, keeping a copy of every masked vector it is handed: the coordinator's view."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.seen: list[np.ndarray] = []

    def add_masked(self, msg: MaskedInput) -> None:
        self.seen.append(msg.vector.copy())
        super().add_masked(msg)


def _uniformity_p_values(vector: np.ndarray) -> tuple[float, float]:
    unit = vector.astype(np.float64) / 2.0**64
    ks = stats.kstest(unit, "uniform").pvalue
    low_byte = np.bincount((vector & np.uint64(0xFF)).astype(np.int64), minlength=256)
    chi = stats.chisquare(low_byte).pvalue
    return float(ks), float(chi)


def _masked_views(
    updates: list[Params], base: Params, neighbours: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    fp = FixedPoint(clip=4.0, frac_bits=28)
    ctx = round_context("view", 1, 0)
    ids = [f"c{i}" for i in range(len(updates))]
    clients = {c: SecAggClient(c, ctx) for c in ids}
    server = RecordingServer(ctx, fp.vector_length(base.spec), 0.5, neighbours=neighbours)
    for cl in clients.values():
        server.add_keys(cl.advertise())
    roster = server.roster()
    for cl in clients.values():
        server.add_shares(cl.share_keys(roster))
    routed = server.routed()
    plain = []
    for c, update in zip(ids, updates, strict=True):
        vector, _ = fp.encode(update, base, 10, 10)
        plain.append(vector)
        server.add_masked(clients[c].masked_input(routed[c], vector))
    return server.seen, plain


@pytest.mark.parametrize(("clients", "neighbours"), [(4, None), (9, 2)])  # everyone; SecAgg+'s sparse graph
def test_each_masked_vector_looks_uniform_and_the_plain_one_does_not(clients: int, neighbours: int | None) -> None:
    base = Params({"w": np.zeros(LENGTH - 2, np.float32)})
    updates = [Params({"w": np.full(LENGTH - 2, 0.25 * (i + 1), np.float32)}) for i in range(clients)]
    seen, plain = _masked_views(updates, base, neighbours)
    assert len(seen) == clients
    for vector in seen:
        ks, chi = _uniformity_p_values(vector)
        assert ks > ALPHA and chi > ALPHA, (ks, chi)
    for vector in plain:
        ks, chi = _uniformity_p_values(vector)
        assert ks < ALPHA and chi < ALPHA


def test_two_clients_with_equal_updates_send_unrelated_vectors() -> None:
    base = Params({"w": np.zeros(LENGTH - 2, np.float32)})
    same = Params({"w": np.full(LENGTH - 2, 0.5, np.float32)})
    seen, _ = _masked_views([same, same, same], base)
    difference = seen[0] - seen[1]  # modulo 2**64: uniform too, if the masks are independent
    ks, chi = _uniformity_p_values(difference)
    assert ks > ALPHA and chi > ALPHA
