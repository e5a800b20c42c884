"""The floor under any framework that runs a Flower app: the app's own work, with no framework at all.

    .venv/bin/python bench/flower_app_floor.py PROJECT CLIENTS [MODEL.safetensors]

One process does only what the app itself needs for a whole run: Python, the app's modules (with
whatever they import: torch, scikit-learn, Flower's records), its ServerApp read up to the point
where it would first talk to the federation (what any framework must do to know the rounds, the
round config and the initial model; fedhive's reader, ``compat.flower.server_capture``, does it
here), and for each round one train and one evaluate message to each of CLIENTS nodes, with a
weighted average of the replies in between. The messages are made with Flower's own classes and
handed to the ``ClientApp`` as a SuperNode hands them (``app(message, context)``, one ``Context``
per node); nothing is sent anywhere, nothing is written, no progress is shown. Python's cycle
collector is paused while the app is imported and what the import made is frozen out of later
collections (``gc.freeze``), as fedhive's nodes do (``fedhive.core.collector``): without it the
collector's walks over torch's objects cost a short PyTorch run 15 to 20 % of its CPU time, which
no framework needs to pay. The nodes start from the ServerApp's initial model; MODEL is used only
where the ServerApp gives none (a legacy strategy that asks a client instead).

bench/compare_flower_apps.py runs it as a third side: a framework that runs the app in one
process cannot take less time or memory than this, and one that runs it in N processes pays the
imports N times. Prints one JSON line (the last round's averaged evaluation metrics).
"""

from __future__ import annotations

import argparse
import gc
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

from fedhive.compat.flower.server_capture import capture_server

Reply = tuple[dict[str, Any], int]  # a node's arrays or metrics, and its example count


def _message(kind: str, content: RecordDict, node: int, server_round: int) -> Message:
    # Built here with Flower's own classes, not with fedhive's adapter (compat.flower.client_adapter
    # builds the same metadata): the floor must not move when fedhive's own message path does.
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


def _arrays(weights: dict[str, np.ndarray], config: dict[str, Any]) -> RecordDict:
    arrays = ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in weights.items()})
    return RecordDict({"arrays": arrays, "config": ConfigRecord(config)})


def _train(app: ClientApp, context: Context, weights: dict[str, np.ndarray], config: dict[str, Any]) -> Reply:
    server_round = int(config["server-round"])
    if _is_legacy(app):
        ins = FitIns(ndarrays_to_parameters(list(weights.values())), config)
        reply = _ask(app, context, MessageType.TRAIN, legacy.fitins_to_recorddict(ins, True), server_round)
        fit = legacy.recorddict_to_fitres(reply, False)
        return dict(zip(weights, parameters_to_ndarrays(fit.parameters), strict=True)), fit.num_examples
    reply = _ask(app, context, MessageType.TRAIN, _arrays(weights, config), server_round)
    arrays = next(iter(reply.array_records.values()))
    count: Any = next(r["num-examples"] for r in reply.metric_records.values() if "num-examples" in r)
    return {k: a.numpy() for k, a in arrays.items()}, int(count)


def _evaluate(app: ClientApp, context: Context, weights: dict[str, np.ndarray], config: dict[str, Any]) -> Reply:
    server_round = int(config["server-round"])
    if _is_legacy(app):
        ins = EvaluateIns(ndarrays_to_parameters(list(weights.values())), config)
        reply = _ask(app, context, MessageType.EVALUATE, legacy.evaluateins_to_recorddict(ins, True), server_round)
        res = legacy.recorddict_to_evaluateres(reply)
        return {"loss": float(res.loss), **{k: float(v) for k, v in res.metrics.items()}}, res.num_examples
    reply = _ask(app, context, MessageType.EVALUATE, _arrays(weights, config), server_round)
    metrics = {k: v for r in reply.metric_records.values() for k, v in r.items() if not isinstance(v, list)}
    return {k: float(v) for k, v in metrics.items() if k != "num-examples"}, int(metrics["num-examples"])


def _average(pairs: list[Reply]) -> dict[str, Any]:
    total = sum(count for _, count in pairs)
    return {k: sum(values[k] * count for values, count in pairs) / total for k in pairs[0][0]}


def main() -> None:
    gc.disable()  # until the app is imported (the module docstring)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", type=Path)
    ap.add_argument("clients", type=int)
    ap.add_argument("model", type=Path, nargs="?", help="the starting model where the ServerApp gives none")
    args = ap.parse_args()
    project = args.project.resolve()
    doc = get_project_config(project)
    run_config = flatten_dict(doc["tool"]["flwr"]["app"].get("config", {}))
    sys.path.insert(0, str(project))
    components = doc["tool"]["flwr"]["app"]["components"]
    app = load_app(components["clientapp"], ValueError, str(project))
    server = load_app(components["serverapp"], ValueError, str(project))
    server_context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    plan = capture_server(server, server_context, str(project))
    gc.freeze()
    gc.enable()
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
    if plan.initial is not None:
        weights = dict(plan.initial)
    elif args.model is not None:
        weights = dict(load_file(str(args.model)))
    else:
        raise SystemExit("the ServerApp gives no initial model: name a MODEL.safetensors to start from")
    evaluation: dict[str, float] = {}
    for server_round in range(1, (plan.num_rounds or 1) + 1):
        config = plan.round_config("train", server_round)
        replies = [_train(app, ctx, weights, config) for ctx in contexts]
        weights = {k: v.astype(weights[k].dtype) for k, v in _average(replies).items()}
        config = plan.round_config("evaluate", server_round)
        evaluation = _average([_evaluate(app, ctx, weights, config) for ctx in contexts])
    print(json.dumps({"evaluate": evaluation}), flush=True)
    # The interpreter's teardown (freeing thousands of modules one by one: most of a second after
    # torch) is no part of the app's work, and a framework need not pay it: end here.
    os._exit(0)


if __name__ == "__main__":
    main()
