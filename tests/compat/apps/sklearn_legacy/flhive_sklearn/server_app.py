"""flhive-sklearn: a Flower / scikit-learn app."""

from flwr.app import Context
from flwr.common import ndarrays_to_parameters
from flwr.server import ServerApp, ServerAppComponents, ServerConfig
from flwr.server.strategy import FedAvg

from flhive_sklearn.task import get_model, get_model_params, set_initial_params


def server_fn(context: Context):
    num_rounds = int(context.run_config["num-server-rounds"])
    model = get_model(str(context.run_config["penalty"]), int(context.run_config["local-epochs"]))
    set_initial_params(model)
    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=1,
        min_evaluate_clients=1,
        min_available_clients=1,
        initial_parameters=ndarrays_to_parameters(get_model_params(model)),
        on_fit_config_fn=lambda server_round: {"server-round": server_round},
    )
    return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=num_rounds))


app = ServerApp(server_fn=server_fn)
