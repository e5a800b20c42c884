"""flhive-sklearn: a Flower / scikit-learn app."""

import warnings

from flwr.app import ConfigRecord, Context, RecordDict
from flwr.client import ClientApp, NumPyClient
from sklearn.metrics import log_loss

from flhive_sklearn.task import get_model, get_model_params, load_data, set_initial_params, set_model_params


class FlowerClient(NumPyClient):
    def __init__(self, model, x_train, y_train, x_test, y_test, partition_id: int, state: RecordDict):
        self.model = model
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.partition_id = partition_id
        self.state = state

    def get_parameters(self, config):
        return get_model_params(self.model)

    def fit(self, parameters, config):
        set_model_params(self.model, parameters)
        with warnings.catch_warnings():  # max_iter is a few local epochs: it never converges
            warnings.simplefilter("ignore")
            self.model.fit(self.x_train, self.y_train)
        fits = self.state.config_records.get("fits", ConfigRecord({"count": 0}))
        fits["count"] = int(fits["count"]) + 1
        self.state["fits"] = fits
        metrics = {
            "train_accuracy": float(self.model.score(self.x_train, self.y_train)),
            "partition": self.partition_id,
            "times-trained": fits["count"],
            "server-round": config["server-round"],
        }
        return get_model_params(self.model), len(self.x_train), metrics

    def evaluate(self, parameters, config):
        set_model_params(self.model, parameters)
        loss = log_loss(self.y_test, self.model.predict_proba(self.x_test), labels=list(range(10)))
        accuracy = self.model.score(self.x_test, self.y_test)
        return float(loss), len(self.x_test), {"accuracy": float(accuracy)}


def client_fn(context: Context):
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    x_train, y_train, x_test, y_test = load_data(partition_id, num_partitions)
    model = get_model(str(context.run_config["penalty"]), int(context.run_config["local-epochs"]))
    set_initial_params(model)
    return FlowerClient(model, x_train, y_train, x_test, y_test, partition_id, context.state).to_client()


app = ClientApp(client_fn=client_fn)
