"""``--flower-app PATH``: a Flower project run unchanged (docs/flower.md).

- ``fedhive simulate``: ``flower_run`` reads what the project's ServerApp would have done: the
  strategy (mapped to fedhive's), the share of clients trained each round, whether clients
  evaluate and the number of rounds. An option the user gives on the command line wins over each.
- A site (``fedhive client``, or any command that hosts sites): ``load_flower_app`` is the
  project's ClientApp as an installed fedhive app, and ``flower_site`` one site running it. The
  session (its coordinator) sets the run config; the site gives ``node_config`` (``--node``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedhive.app.loader import LoadedApp
from fedhive.cli.key_values import parse_pairs
from fedhive.errors import ConfigError
from fedhive.learning.local_data import LocalData
from fedhive.runtime.site_app import SiteApp
from fedhive.service.apps import state_folder_name

FlowerAppOption = Annotated[
    Path | None,
    typer.Option(
        "--flower-app",
        help="a Flower project folder: run its ClientApp unchanged (needs flwr, docs/flower.md)",
    ),
]


@dataclass(frozen=True)
class FlowerRun:
    loaded: LoadedApp
    rounds: int
    strategy: str
    fraction: float
    evaluate: str


def flower_run(ctx: typer.Context, folder: Path, overrides: dict[str, Any], console: Console) -> FlowerRun:
    """The Flower app at ``folder`` and the session settings it implies; prints in one line what
    of its ServerApp fedhive does not map."""
    from fedhive.compat.flower import load_flower_project

    if _given(ctx, "app"):
        raise ConfigError("give --app or --flower-app, not both")
    project = load_flower_project(folder, overrides)
    mapping = project.strategy
    note = mapping.note()
    if note:
        console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)  # one line, whatever the width
    params = ctx.params
    return FlowerRun(
        loaded=project.loaded,
        rounds=params["rounds"] if _given(ctx, "rounds") or project.num_rounds is None else project.num_rounds,
        strategy=params["strategy"] if _given(ctx, "strategy") else mapping.spec,
        fraction=params["fraction"] if _given(ctx, "fraction") or mapping.fraction is None else mapping.fraction,
        evaluate=params["evaluate"] if _given(ctx, "evaluate") else "clients" if mapping.evaluates else "none",
    )


def _given(ctx: typer.Context, name: str) -> bool:
    # By name: typer vendors its own click in some releases, so the enum's class differs.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def load_flower_app(folder: Path) -> LoadedApp:
    """The Flower project at ``folder`` as an installed app (loaded once per process); its name is
    the project's ``[project].name``, its digest that of the folder's code."""
    from fedhive.compat.flower import installed_flower_project

    return installed_flower_project(folder).loaded


def flower_site(
    client_id: str, folder: Path, node: list[str] | None, data: LocalData, *, state_dir: Path | None
) -> SiteApp:
    """One site running the Flower app at ``folder``: ``--node key=value`` fills its Flower
    ``context.node_config`` (``partition-id=0`` for an app written for Flower's simulation)."""
    if data.csv is not None or data.dataset is not None or data.part is not None:
        raise ConfigError(
            "--csv, --dataset and --part are the built-in app's data options; a Flower app reads its own data, "
            "configured with --node key=value (its context.node_config)"
        )
    settings = parse_pairs(node, "--node")
    loaded = load_flower_app(folder)
    if state_dir is None:  # where build_site keeps any other app's ctx.state
        state_dir = Path.home() / ".fedhive" / "state" / state_folder_name(client_id) / state_folder_name(loaded.name)
    return SiteApp(loaded, client_id, settings, state_dir)
