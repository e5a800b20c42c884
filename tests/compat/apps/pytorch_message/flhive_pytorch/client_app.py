"""flhive-pytorch: a Flower / PyTorch app."""

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flhive_pytorch.task import Net, load_data
from flhive_pytorch.task import test as test_fn
from flhive_pytorch.task import train as train_fn

app = ClientApp()


def _data(context: Context):
    return load_data(
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        int(context.run_config["batch-size"]),
    )


@app.train()
def train(msg: Message, context: Context):
    """Train the model on local data."""
    torch.manual_seed(int(context.node_config["partition-id"]))
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    trainloader, _ = _data(context)
    train_loss = train_fn(model, trainloader, int(context.run_config["local-epochs"]), float(context.run_config["lr"]))

    # Keep the best local loss this node has seen, across rounds, in its own state.
    best = context.state.metric_records.get("best", MetricRecord({"train_loss": float("inf")}))
    best["train_loss"] = min(float(best["train_loss"]), train_loss)
    context.state["best"] = best

    metrics = {
        "train_loss": train_loss,
        "best_train_loss": best["train_loss"],
        "partition": int(context.node_config["partition-id"]),
        "num-examples": len(trainloader.dataset),
    }
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the model on local data."""
    model = Net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, testloader = _data(context)
    eval_loss, eval_acc = test_fn(model, testloader)
    metrics = {"eval_loss": eval_loss, "eval_acc": eval_acc, "num-examples": len(testloader.dataset)}
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
