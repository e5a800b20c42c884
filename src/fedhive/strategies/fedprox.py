"""FedProx (Li et al. 2020): FedAvg on the server, a proximal term on the clients.

The server side is plain weighted averaging; what makes it FedProx is that every client adds
``mu/2 * ||w - w_global||^2`` to its local loss. The strategy says so through ``client_config``,
which the coordinator merges into each round's fit config; the trainers implement the term.
"""

from __future__ import annotations

from fedhive.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, *, mu: float = 0.01, weighted: bool = True) -> None:
        super().__init__(weighted=weighted)
        self.mu = mu

    def client_config(self) -> dict[str, object]:
        return {"proximal_mu": self.mu}

    def config(self) -> dict[str, object]:
        return {**super().config(), "mu": self.mu}
