"""flhive-numpy: a Flower / NumPy app."""

import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flhive_numpy.task import load_data, mse
from flhive_numpy.task import train as train_fn

app = ClientApp()


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data."""
    w, b = msg.content["arrays"].to_numpy_ndarrays()
    config = msg.content["config"]
    server_round = int(config["server-round"])
    partition_id = int(context.node_config["partition-id"])
    faulty = partition_id == context.run_config["fail-partition"] and server_round == 2
    if faulty and context.run_config["fault"] == "raise":
        raise RuntimeError(f"partition {partition_id} lost its data in round {server_round}")
    x, y = load_data(partition_id)
    lr = float(context.run_config["learning-rate"]) * float(config["lr-decay"]) ** (server_round - 1)
    w, b, loss = train_fn(w, b, x, y, lr, int(context.run_config["local-epochs"]))

    # The node's own memory across rounds: how many times it trained.
    progress = context.state.config_records.get("progress", ConfigRecord({"trained": 0}))
    progress["trained"] = int(progress["trained"]) + 1
    context.state["progress"] = progress
    # A node that stalls in one round, for tests of what a restarted node keeps: --node stall-round=R.
    if server_round == int(context.node_config.get("stall-round", 0)):
        time.sleep(600)

    metrics = {
        "train_loss": loss,
        "num-examples": len(y),
        "partition": partition_id,
        "num-partitions": int(context.node_config["num-partitions"]),
        "times-trained": progress["trained"],
        "server-round": server_round,
        "lr": lr,
    }
    content = RecordDict({"arrays": ArrayRecord([w, b]), "metrics": MetricRecord(metrics)})
    if faulty and context.run_config["fault"] == "no-arrays":
        del content["arrays"]
    if faulty and context.run_config["fault"] == "no-num-examples":
        del content["metrics"]["num-examples"]
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the global model on local data."""
    w, b = msg.content["arrays"].to_numpy_ndarrays()
    x, y = load_data(int(context.node_config["partition-id"]))
    metrics = MetricRecord({"eval_mse": mse(w, b, x, y), "num-examples": len(y)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
