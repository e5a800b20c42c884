"""flhive-numpy: a Flower / NumPy app."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    num_rounds = int(context.run_config["num-server-rounds"])
    fraction_train = float(context.run_config["fraction-train"])

    arrays = ArrayRecord([np.zeros(5, dtype=np.float32), np.zeros(1, dtype=np.float32)])
    strategy = FedAvg(fraction_train=fraction_train, min_train_nodes=1, min_evaluate_nodes=1, min_available_nodes=1)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr-decay": 0.9}),
        num_rounds=num_rounds,
    )
    print("final weights:", result.arrays.to_numpy_ndarrays())
