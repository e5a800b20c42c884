"""What a site runs: ``--app`` (its own install), ``--node key=value`` and ``--state-dir``.

The built-in app takes its data from ``--dataset``/``--part`` or ``--csv``/``--label``; any other app
reads its site settings from ``ctx.node``, which ``--node`` fills.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from fedhive.app.loader import BUILTIN, load_app
from fedhive.cli.key_values import parse_pairs
from fedhive.errors import ConfigError
from fedhive.learning.federation_data import DataSpec, prepare
from fedhive.learning.local_data import LocalData
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.simulation import SimulationPlan, plan_simulation
from fedhive.runtime.site_app import SiteApp

AppOption = Annotated[
    str,
    typer.Option(help="the app this site runs: module:attr, file.py:attr, a project folder, or builtin"),
]
NodeOption = Annotated[
    list[str] | None, typer.Option("--node", help="a site setting for the app's ctx.node, key=value; repeatable")
]
StateDirOption = Annotated[
    Path | None,
    typer.Option(help="where ctx.state is kept across restarts [default: ~/.fedhive/state/ID]"),
]


# The built-in app's data at a site (client, agent): its own CSV, or a part of a demo data set.
CsvOption = Annotated[Path | None, typer.Option("--csv", help="builtin app: this site's own data (CSV with a header)")]
LabelOption = Annotated[str | None, typer.Option(help="builtin app: label column of the CSV")]
DatasetOption = Annotated[str | None, typer.Option(help="builtin app, demo: a built-in data set (digits, iris, ...)")]
PartitionOption = Annotated[str, typer.Option(help="demo: iid, dirichlet:ALPHA, label-shards:K, label-range")]
PartOption = Annotated[str | None, typer.Option(help="demo: this site's part, I/N (e.g. 3/10)")]
TestFractionOption = Annotated[float, typer.Option(help="demo: held-out share, as in the session file")]
SeedOption = Annotated[int, typer.Option(help="demo: the session's seed (re-drawn if the session's differs)")]


def build_site(
    client_id: str,
    app: str,
    node: list[str] | None,
    data: LocalData,
    *,
    seed: int = 0,
    state_dir: Path | None = None,
    persist_state: bool = True,
) -> SiteApp:
    """The site's app, its settings, and (built-in app) what it announces at registration."""
    settings = parse_pairs(node, "--node")
    loaded = load_app(app)
    if state_dir is None and persist_state:
        state_dir = Path.home() / ".fedhive" / "state" / _safe(client_id) / _safe(loaded.name)
    if app != BUILTIN:
        if data.csv is not None or data.dataset is not None or data.part is not None:
            raise ConfigError(
                "--csv, --dataset and --part are the built-in app's data options; give your app's settings with "
                "--node key=value (it reads them from ctx.node)"
            )
        return SiteApp(loaded, client_id, settings, state_dir)
    data.check()
    shard = data.shard(seed)
    return SiteApp(
        loaded,
        client_id,
        {**data.node_settings(), **settings},
        state_dir,
        num_examples=len(shard),
        label_counts=data.label_counts(seed),
    )


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def plan_builtin(config: SessionConfig, data: DataSpec, clients: int, *, evaluate: str = "auto") -> SimulationPlan:
    """A simulation of the built-in app on a demo data set or CSV (``fedhive simulate --dataset``)."""
    data.check()
    plan = plan_simulation(
        config, load_app(BUILTIN), clients, node=data.model_dump(exclude_none=True), evaluate=evaluate
    )
    # Each virtual client registers with its shard's size, as a networked client of the built-in
    # app does: what caps its weight in aggregation (examples_cap_factor).
    shards = prepare(data, clients, config.seed).shards
    return dataclasses.replace(plan, num_examples=[len(s) for s in shards])
