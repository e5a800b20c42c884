"""The floor under any framework that runs a Flower app: the app's own work, with no framework at all.

    .venv/bin/python bench/flower_app_floor.py PROJECT CLIENTS MODEL.safetensors

One process does only what the app itself needs for a whole run: Python, the app's modules (with
whatever they import: torch, scikit-learn, Flower's records), and for each of the project's
``num-server-rounds`` rounds one train and one evaluate message to each of CLIENTS nodes, with a
weighted average of the replies in between. The messages are made with Flower's own classes and
handed to the ``ClientApp`` as a SuperNode hands them (``app(message, context)``, one ``Context``
per node); nothing is sent anywhere, nothing is written, no progress is shown. MODEL gives the
shapes of the model the nodes start from (bench/compare_flower_apps.py passes the final model
of fedhive's run: the same arrays, so the same work per step).

bench/compare_flower_apps.py runs it as a third side: a framework that runs the app in one
process cannot take less time or memory than this, and one that runs it in N processes pays the
imports N times. Prints one JSON line (the last round's averaged evaluation metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import DEFAULT_TTL, Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.common import EvaluateIns, FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.config import flatten_dict, get_project_config
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.compat.common import recorddict_compat as legacy
from flwr.supercore.object_ref import load_app
from safetensors.numpy import load_file

Reply = tuple[dict[str, Any], int]  # a node's arrays or metrics, and its example count


def _message(kind: str, content: RecordDict, node: int, server_round: int) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=f"{kind}-{server_round}-{node}",
        src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=node,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=time.time(),
        ttl=DEFAULT_TTL,
        message_type=kind,
    )
    return make_message(metadata, content)


def _is_legacy(app: ClientApp) -> bool:
    # A ClientApp made from a legacy client_fn keeps it wrapped as its handler (Flower has no
    # public way to ask); a Message API app has none and dispatches to its @app.train() etc.
    return getattr(app, "_call", None) is not None


def _ask(app: ClientApp, context: Context, kind: str, content: RecordDict, server_round: int) -> RecordDict:
    return app(_message(kind, content, context.node_id, server_round), context).content


def _arrays(weights: dict[str, np.ndarray], server_round: int) -> RecordDict:
    arrays = ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in weights.items()})
    return RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": server_round})})


def _train(app: ClientApp, context: Context, weights: dict[str, np.ndarray], server_round: int) -> Reply:
    if _is_legacy(app):
        ins = FitIns(ndarrays_to_parameters(list(weights.values())), {"server-round": server_round})
        reply = _ask(app, context, MessageType.TRAIN, legacy.fitins_to_recorddict(ins, True), server_round)
        fit = legacy.recorddict_to_fitres(reply, False)
        return dict(zip(weights, parameters_to_ndarrays(fit.parameters), strict=True)), fit.num_examples
    reply = _ask(app, context, MessageType.TRAIN, _arrays(weights, server_round), server_round)
    arrays = next(iter(reply.array_records.values()))
    count: Any = next(r["num-examples"] for r in reply.metric_records.values() if "num-examples" in r)
    return {k: a.numpy() for k, a in arrays.items()}, int(count)


def _evaluate(app: ClientApp, context: Context, weights: dict[str, np.ndarray], server_round: int) -> Reply:
    if _is_legacy(app):
        ins = EvaluateIns(ndarrays_to_parameters(list(weights.values())), {"server-round": server_round})
        reply = _ask(app, context, MessageType.EVALUATE, legacy.evaluateins_to_recorddict(ins, True), server_round)
        res = legacy.recorddict_to_evaluateres(reply)
        return {"loss": float(res.loss), **{k: float(v) for k, v in res.metrics.items()}}, res.num_examples
    reply = _ask(app, context, MessageType.EVALUATE, _arrays(weights, server_round), server_round)
    metrics = {k: v for r in reply.metric_records.values() for k, v in r.items() if not isinstance(v, list)}
    return {k: float(v) for k, v in metrics.items() if k != "num-examples"}, int(metrics["num-examples"])


def _average(pairs: list[Reply]) -> dict[str, Any]:
    total = sum(count for _, count in pairs)
    return {k: sum(values[k] * count for values, count in pairs) / total for k in pairs[0][0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("clients", type=int)
    ap.add_argument("model", type=Path, help="safetensors file with the starting model's arrays")
    args = ap.parse_args()
    project = args.project.resolve()
    doc = get_project_config(project)
    run_config = flatten_dict(doc["tool"]["flwr"]["app"].get("config", {}))
    sys.path.insert(0, str(project))
    app = load_app(doc["tool"]["flwr"]["app"]["components"]["clientapp"], ValueError, str(project))
    contexts = [
        Context(
            run_id=1,
            node_id=node + 1,
            node_config={"partition-id": node, "num-partitions": args.clients},
            state=RecordDict(),
            run_config=dict(run_config),
        )
        for node in range(args.clients)
    ]
    weights = dict(load_file(str(args.model)))
    evaluation: dict[str, float] = {}
    for server_round in range(1, int(run_config.get("num-server-rounds", 1)) + 1):
        replies = [_train(app, ctx, weights, server_round) for ctx in contexts]
        weights = {k: v.astype(weights[k].dtype) for k, v in _average(replies).items()}
        evaluation = _average([_evaluate(app, ctx, weights, server_round) for ctx in contexts])
    print(json.dumps({"evaluate": evaluation}), flush=True)
    # The interpreter's teardown (freeing thousands of modules one by one: most of a second after
    # torch) is no part of the app's work, and a framework need not pay it: end here.
    os._exit(0)


if __name__ == "__main__":
    main()
