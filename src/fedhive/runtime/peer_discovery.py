"""A peer's start (``runtime.peer``): until it holds a model, whether enough peers have announced,
whether it is the one to make the seed model, and which seed model it may accept."""

from __future__ import annotations

import time

from fedhive.app.learner import Trainer
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.runtime.peer_rounds import params_digest


class PeerDiscovery:
    def __init__(self, min_peers: int, timeout_s: float, initial: Params | None, spec: ParamSpec) -> None:
        self.min_peers = min_peers
        self.timeout_s = timeout_s
        # The seed model given to this peer (``fedhive peer --initial-model``) instead of the app's
        # init. Whichever peer seeds, every peer must have been given the same one: a peer given one
        # refuses a seed model with another digest rather than train from weights it was not told of.
        if initial is not None:
            check_against_spec(initial, spec, what="initial model")
        self._initial = initial
        self._initial_digest = params_digest(initial) if initial is not None else None
        self._quorum_since = 0.0
        self._started = time.monotonic()

    def gave_up(self, alive: int, model_held: bool) -> str | None:
        """Why this peer stops waiting for a model (None: it waits on)."""
        if time.monotonic() - self._started <= self.timeout_s:
            return None
        waited = f"{self.timeout_s:.0f} s"
        if model_held:
            return f"peers hold a model but none handed it to us within {waited}"
        return f"only {alive} of {self.min_peers} peers announced within {waited}"

    def is_seeder(self, peer_id: str, alive: list[str], model_held: bool) -> bool:
        """Whether this peer makes the seed model now: the lowest id that any of the quorum can see."""
        if len(alive) < self.min_peers or model_held:
            self._quorum_since = 0.0  # too few, or late: the model will come from the round's leader
            return False
        # Wait one beat with the quorum present so that every peer that announced with it is known:
        # the seeder is then the lowest id that any of them can see.
        if not self._quorum_since:
            self._quorum_since = time.monotonic()
            return False
        return min(alive) == peer_id

    def seed_model(self, trainer: Trainer, seed: int) -> Params:
        return self._initial.copy() if self._initial is not None else trainer.initial_params(seed)

    def refusal(self, sender: str, digest: str | None) -> str | None:
        """Why a seed model with ``digest`` from ``sender`` is refused (None: it is taken)."""
        if self._initial_digest is None or digest == self._initial_digest:
            return None
        return (
            f"peer {sender[:8]} seeded a model other than this peer's --initial-model "
            f"(digest {str(digest)[:12]}, not {self._initial_digest[:12]}): "
            "give every peer the same --initial-model"
        )
