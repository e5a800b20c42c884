"""bench/workload.py's logistic regression as a fedhive app, for the compute-bound case.

bench/fedhive_side.py loads it by reference (``bench/workload_app.py:app``) in the simulation's
process and in each worker process, as ``fedhive simulate --app`` would: client ``partition_id``
derives its data from (seed, its index) and takes ``local_steps`` full-batch gradient steps, the
very calls bench/flower_side.py makes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import fedhive
import workload

app = fedhive.ClientApp()


@app.init
def init(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> dict[str, Any]:
    return workload.logreg_initial(int(config["seed"]))


@app.train
def train(weights: fedhive.Weights, config: Mapping[str, Any], ctx: fedhive.Context) -> fedhive.TrainResult:
    x, y = workload.logreg_client_data(workload.SEED, int(ctx.node["partition_id"]))
    w, b, loss, acc = workload.logreg_fit(
        weights["weight"], weights["bias"], x, y, int(config["local_steps"]), float(config["lr"])
    )
    return fedhive.TrainResult({"weight": w, "bias": b}, len(y), {"loss": loss, "accuracy": acc})
