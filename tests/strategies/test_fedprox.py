from __future__ import annotations

import numpy as np

from fedhive.core.params import Params
from fedhive.strategies.base import Update
from fedhive.strategies.fedavg import FedAvg
from fedhive.strategies.fedprox import FedProx


def test_fedprox_tells_clients_its_mu() -> None:
    assert FedProx(mu=0.1).client_config() == {"proximal_mu": 0.1}
    assert FedAvg().client_config() == {}
    assert FedProx(mu=0.1).config() == {"name": "fedprox", "weighted": True, "mu": 0.1}


def test_fedprox_aggregates_like_fedavg() -> None:
    g = Params({"w": np.zeros(2, np.float32)})
    agg = FedProx(mu=0.5).aggregator(g)
    agg.add(Update("a", Params({"w": np.array([1, 2], np.float32)}), 1))
    agg.add(Update("b", Params({"w": np.array([3, 6], np.float32)}), 3))
    r = agg.result()
    new = FedProx(mu=0.5).apply(g, r, 1)
    np.testing.assert_allclose(new["w"], [2.5, 5.0])
