"""DP-FedAvg on digits: final accuracy and the epsilon spent, per noise multiplier, against FedAvg.

    python bench/dp_table.py [--clients 10] [--rounds 20] [--clip 0.5] [--noise 0.5 1.0 2.0]
                             [--sample-rate 1.0]

Central DP: every client update is clipped to L2 norm ``clip`` and Gaussian noise of standard
deviation ``noise * clip`` is added to the sum (strategies/dp_fedavg.py); the accountant
(``dp-accounting``: RDP and PLD, the smaller reported) gives epsilon for delta = 1e-5 after each
round. The simulations have every client in every round (sampling rate 1). Beside fedhive's
epsilons (from the session's round metrics) the table shows dp-accounting's, computed here
directly from ``SelfComposedDpEvent(GaussianDpEvent(noise), rounds)`` (Poisson-subsampled at
``--sample-rate`` when below 1, for the accountant rows only), and checks that they are equal.
Same data split, model and seed for every row. Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from typing import Any

import dp_accounting
from dp_accounting import pld, rdp
from rich.console import Console
from rich.table import Table

from fedhive.cli.site_options import plan_builtin
from fedhive.learning.federation_data import DataSpec
from fedhive.runtime.session_config import make_config
from fedhive.runtime.simulation import run_federation
from fedhive.strategies.dp_fedavg import DPFedAvg

DELTA = 1e-5


def run(strategy: str, clients: int, rounds: int) -> dict[str, Any]:
    config = make_config(
        rounds=rounds,
        min_clients=clients,
        model="logreg-np",
        lr=0.1,
        momentum=0.0,
        epochs=1,
        batch_size=32,
        seed=0,
        strategy=strategy,
    )
    plan = plan_builtin(config, DataSpec(dataset="digits", partition="iid"), clients)
    started = time.perf_counter()
    result = asyncio.run(
        run_federation(plan.config, plan.trainers, plan.num_examples, plan.initial_params, evaluator=plan.evaluator)
    )
    m = result.metrics
    row: dict[str, Any] = {"strategy": strategy, "accuracy": round(m["accuracy"], 4)}
    for key in ("epsilon", "epsilon_rdp", "epsilon_pld"):
        row[key] = m.get(key)
    row["wall_s"] = round(time.perf_counter() - started, 2)
    return row


def dp_accounting_reference(noise: float, q: float, rounds: int, delta: float) -> dict[str, float]:
    """dp-accounting's epsilons, from the event built here by hand (not through fedhive)."""
    one: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise)
    if q < 1:
        one = dp_accounting.PoissonSampledDpEvent(q, one)
    event = dp_accounting.SelfComposedDpEvent(one, rounds)
    r = rdp.RdpAccountant()
    r.compose(event)
    p = pld.PLDAccountant()
    p.compose(event)
    return {"rdp": float(r.get_epsilon(delta)), "pld": float(p.get_epsilon(delta))}


def fedhive_accountant(noise: float, q: float, rounds: int, delta: float) -> dict[str, Any]:
    s = DPFedAvg(noise=noise, sample_rate=q, delta=delta, seed=0)
    spent = s.accountant.spent(rounds, delta)
    return {"rdp": spent.epsilon_rdp, "pld": spent.epsilon_pld, "epsilon": spent.epsilon, "reported": spent.tightest}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--clip", type=float, default=0.5)
    p.add_argument("--noise", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    p.add_argument("--sample-rate", type=float, default=0.1, help="q of the extra accountant-only rows")
    a = p.parse_args()
    # dp-accounting's RDP accountant logs each small fractional order it leaves out (harmless).
    logging.getLogger("absl").setLevel(logging.ERROR)
    rows = [run("fedavg", a.clients, a.rounds)]
    for z in a.noise:
        rows.append(run(f"dp-fedavg:clip={a.clip},noise={z},delta={DELTA},seed=0", a.clients, a.rounds))
        rows[-1]["noise"] = z
        rows[-1]["dp_accounting"] = dp_accounting_reference(z, 1.0, a.rounds, DELTA)
    console = Console(stderr=True, width=130)
    table = Table(title=f"DP-FedAvg, digits, {a.clients} clients, {a.rounds} rounds, clip {a.clip}, delta {DELTA}")
    for col in ("strategy", "noise", "final accuracy", "epsilon", "RDP", "PLD", "dp-acc. RDP", "dp-acc. PLD", "wall s"):
        table.add_column(col)
    equal = True
    for r in rows:
        z = "-" if "noise" not in r else f"{r['noise']:g}"
        if r["epsilon"] is None:
            eps_cells = ["-"] * 5
        else:
            ref = r["dp_accounting"]
            same = r["epsilon_rdp"] == ref["rdp"] and r["epsilon_pld"] == ref["pld"]
            same = same and r["epsilon"] == min(ref["rdp"], ref["pld"])
            r["equal"] = same
            equal = equal and same
            which = "PLD" if r["epsilon"] == r["epsilon_pld"] else "RDP"
            eps_cells = [
                f"{r['epsilon']:.2f} ({which})",
                f"{r['epsilon_rdp']:.4f}",
                f"{r['epsilon_pld']:.4f}",
                f"{ref['rdp']:.4f}",
                f"{ref['pld']:.4f}",
            ]
        table.add_row(r["strategy"].split(":")[0], z, f"{r['accuracy']:.4f}", *eps_cells, f"{r['wall_s']:.1f}")
    console.print(table)

    # The accountant alone, for Poisson sampling at --sample-rate (what a sampled DP session claims).
    sampled = []
    acc = Table(title=f"Accountant only: Poisson sampling q={a.sample_rate}, {a.rounds} and 100 rounds, delta {DELTA}")
    for col in ("noise", "rounds", "fedhive RDP", "fedhive PLD", "reported", "dp-acc. RDP", "dp-acc. PLD", "equal"):
        acc.add_column(col)
    for z in a.noise:
        for t in (a.rounds, 100):
            fh = fedhive_accountant(z, a.sample_rate, t, DELTA)
            ref = dp_accounting_reference(z, a.sample_rate, t, DELTA)
            same = fh["rdp"] == ref["rdp"] and fh["pld"] == ref["pld"]
            equal = equal and same
            sampled.append({"noise": z, "q": a.sample_rate, "rounds": t, "fedhive": fh, "dp_accounting": ref})
            reported = f"{fh['epsilon']:.2f} ({fh['reported'].upper()})"
            acc.add_row(
                f"{z:g}", str(t), f"{fh['rdp']:.4f}", f"{fh['pld']:.4f}", reported,
                f"{ref['rdp']:.4f}", f"{ref['pld']:.4f}", "yes" if same else "NO",
            )  # fmt: skip
    console.print(acc)
    console.print("fedhive's epsilons equal dp-accounting's" if equal else "MISMATCH between fedhive and dp-accounting")
    summary = {
        "clients": a.clients,
        "rounds": a.rounds,
        "clip": a.clip,
        "delta": DELTA,
        "rows": rows,
        "accountant_only": sampled,
        "equal_to_dp_accounting": equal,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
