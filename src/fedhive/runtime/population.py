"""A simulated population far larger than a round: its bookkeeping as numpy columns.

``fedhive simulate --clients 15000000 --per-round 1000`` cannot keep a Python object, a dict
entry or a registration per client: 15 million of them would take gigabytes and minutes before the
first round. A ``Population`` keeps what the coordinator knows of each client as one column per
fact (status, registered example count, updates accepted, last round trained), 13 bytes a client,
and names client ``i`` ``client-<i>`` (zero-padded, as ``simulation.client_id`` does) without
storing the name. Selection draws indices, not names, with the very draw a registry of the same
clients would make (``numpy``'s ``choice`` picks the same positions of ``range(n)`` as of a sorted
list of ``n`` names), so a seed selects the same clients either way.

``PopulationRegistry`` is the ``ClientRegistry`` the coordinator's node sees: it answers from the
columns. Listing every client (``online``, ``all``) works but is what a population's own paths never
do (``runtime.population_node``).
"""

from __future__ import annotations

import numpy as np

from fedhive.errors import ConfigError, ProtocolError
from fedhive.runtime.registry import ClientInfo, ClientRegistry, PeerStatus

PREFIX = "client-"
STATUSES = (PeerStatus.ONLINE, PeerStatus.TRAINING, PeerStatus.OFFLINE)  # column code = position
OFFLINE = STATUSES.index(PeerStatus.OFFLINE)


class Population:
    """``size`` simulated clients, known by index; ``host`` is the node that answers for all."""

    def __init__(self, size: int, *, host: str = "client-host") -> None:
        if size < 1:
            raise ConfigError(f"a population needs at least 1 client, got {size}")
        self.size = size
        self.host = host
        self._width = len(str(max(size - 1, 1)))
        # np.zeros: the pages of a column nobody writes are never touched, so a column costs
        # memory only where clients took part.
        self.status = np.zeros(size, np.uint8)  # code of PeerStatus (STATUSES)
        self.num_examples = np.zeros(size, np.int32)  # registered count (0: not known)
        self.updates = np.zeros(size, np.uint32)  # updates accepted from the client
        self.last_round = np.zeros(size, np.int32)  # the last round it sent one in (0: never)
        self._offline = 0

    @property
    def nbytes(self) -> int:
        """The bookkeeping's size: a fixed number of bytes per client."""
        return sum(c.nbytes for c in (self.status, self.num_examples, self.updates, self.last_round))

    # -- names ----------------------------------------------------------------------------------
    def client_id(self, index: int) -> str:
        return f"{PREFIX}{index:0{self._width}d}"

    def ids(self, indices: np.ndarray) -> list[str]:
        width = self._width
        return [f"{PREFIX}{i:0{width}d}" for i in indices.tolist()]

    def index_of(self, client_id: str) -> int | None:
        """The index of ``client_id``, or None if it names no client of this population."""
        digits = client_id[len(PREFIX) :]
        well_formed = client_id.startswith(PREFIX) and len(digits) == self._width
        if not (well_formed and digits.isascii() and digits.isdigit()):
            return None
        index = int(digits)
        return index if index < self.size else None

    # -- status ---------------------------------------------------------------------------------
    def online_count(self) -> int:
        return self.size - self._offline

    def set_status(self, index: int, status: PeerStatus) -> PeerStatus | None:
        """Set one client's status; returns the previous one if it changed."""
        code, previous = STATUSES.index(status), int(self.status[index])
        if code == previous:
            return None
        self.status[index] = code
        self._offline += (code == OFFLINE) - (previous == OFFLINE)
        return STATUSES[previous]

    def set_all(self, status: PeerStatus, *, unless: PeerStatus = PeerStatus.OFFLINE) -> None:
        """Every client not ``unless`` gets ``status`` (enabled: TRAINING; released: ONLINE)."""
        if status is PeerStatus.OFFLINE:
            raise ValueError("a whole population does not go OFFLINE at once")
        if self._offline == 0:
            self.status.fill(STATUSES.index(status))
        else:
            self.status[self.status != STATUSES.index(unless)] = STATUSES.index(status)

    # -- selection ------------------------------------------------------------------------------
    def _online(self) -> np.ndarray | None:
        """Indices of the clients not OFFLINE, or None when that is every client."""
        return None if self._offline == 0 else np.flatnonzero(self.status != OFFLINE)

    def choose(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` of the clients not OFFLINE, without replacement, sorted: the positions a registry
        of the same clients would draw from its sorted list of names."""
        online = self._online()
        n = self.size if online is None else len(online)
        if k >= n:
            return np.arange(self.size) if online is None else online
        picked = rng.choice(n, size=k, replace=False)
        return np.sort(picked if online is None else online[picked])

    def poisson(self, rate: float, rng: np.random.Generator) -> np.ndarray:
        """Each client not OFFLINE independently with probability ``rate`` (one uniform draw per
        candidate, in index order: ``strategies.sampling.poisson_sample``'s draw)."""
        online = self._online()
        n = self.size if online is None else len(online)
        if rate >= 1:
            return np.arange(n) if online is None else online
        if rate <= 0 or n == 0:
            return np.empty(0, np.int64)
        keep = np.flatnonzero(rng.random(n) < rate)
        return keep if online is None else online[keep]

    # -- what happened --------------------------------------------------------------------------
    def record(self, round: int, indices: list[int]) -> None:
        """The clients at ``indices`` sent an accepted update in ``round``."""
        at = np.asarray(indices, np.int64)
        self.updates[at] += 1  # a round names a client once: no repeated index to lose
        self.last_round[at] = round

    def trained(self) -> int:
        """How many clients have sent an accepted update so far."""
        return int(np.count_nonzero(self.updates))


class PopulationRegistry(ClientRegistry):
    """A ``ClientRegistry`` over a ``Population``'s columns. Clients do not register one by one:
    the population is given whole (its host registers once for all, ``population_node``)."""

    def __init__(self, population: Population) -> None:
        super().__init__(heartbeat_timeout_s=None)  # virtual clients live and die with this process
        self.population = population

    def __contains__(self, client_id: str) -> bool:
        return self.population.index_of(client_id) is not None

    def get(self, client_id: str) -> ClientInfo | None:
        """A snapshot made from the columns: changing it changes nothing."""
        pop = self.population
        i = pop.index_of(client_id)
        if i is None:
            return None
        return ClientInfo(client_id, int(pop.num_examples[i]), STATUSES[int(pop.status[i])], 0.0)

    def all(self) -> list[ClientInfo]:
        pop = self.population
        return [info for i in range(pop.size) if (info := self.get(pop.client_id(i))) is not None]

    def register(
        self, client_id: str, num_examples: int, label_counts: dict[str, int] | None = None
    ) -> PeerStatus | None:
        raise ProtocolError(f"{client_id} cannot register on its own: it is one of a simulated population")

    def seen(self, client_id: str) -> PeerStatus | None:
        i = self.population.index_of(client_id)
        if i is None or self.population.status[i] != OFFLINE:
            return None
        self.population.set_status(i, PeerStatus.ONLINE)
        return PeerStatus.OFFLINE

    def set_status(self, client_id: str, status: PeerStatus) -> PeerStatus | None:
        i = self.population.index_of(client_id)
        return None if i is None else self.population.set_status(i, status)

    def online_count(self) -> int:
        return self.population.online_count()

    def online(self) -> list[str]:
        pop = self.population
        online = pop._online()
        return pop.ids(np.arange(pop.size) if online is None else online)

    def refresh_all(self) -> None:
        return None  # nothing to refresh: no heartbeats

    def expire(self) -> list[str]:
        return []
