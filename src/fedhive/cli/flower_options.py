"""``--flower-app PATH``: a Flower project run unchanged (docs/flower.md).

- ``fedhive simulate``: ``flower_run`` reads what the project's ServerApp would have done: the
  strategy (mapped to fedhive's), the share of clients trained each round, whether clients
  evaluate and the number of rounds. An option the user gives on the command line wins over each.
- A site (``fedhive client``, ``agent``, ``peer``, or any command that hosts sites):
  ``load_flower_app`` is the project's ClientApp as an installed fedhive app, and ``flower_site``
  one site running it. The session (its coordinator) sets the run config; the site gives
  ``node_config`` (``--node``).
- A session file (``fedhive coordinator --config``): ``app = "flower:PATH"``
  (``flower_session_app``), with the ServerApp's rounds and strategy where the file sets none.
"""

from __future__ import annotations

from collections.abc import Container
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


FlowerAppsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--flower-app",
        help="a Flower project folder whose ClientApp this site runs unchanged (needs flwr, docs/flower.md); "
        "repeatable",
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
    from fedhive.compat.flower import installed_flower_project, load_flower_project

    if _given(ctx, "app"):
        raise ConfigError("give --app or --flower-app, not both")
    # Without overrides, the installed project: the one a site of this process (a peer) runs.
    project = load_flower_project(folder, overrides) if overrides else installed_flower_project(folder)
    mapping = project.strategy
    note = mapping.note()
    if note:
        console.print(f"[yellow]{escape(note)}[/]", soft_wrap=True)  # one line, whatever the width
    params = ctx.params
    # A command without a --fraction option (a peer) trains every client, unless the ServerApp says.
    fraction = params.get("fraction", 1.0) if _given(ctx, "fraction") or mapping.fraction is None else mapping.fraction
    return FlowerRun(
        loaded=project.loaded,
        rounds=params["rounds"] if _given(ctx, "rounds") or project.num_rounds is None else project.num_rounds,
        strategy=params["strategy"] if _given(ctx, "strategy") else mapping.spec,
        fraction=fraction,
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


def flower_agent_sites(
    client_id: str, folders: list[Path], node: list[str] | None, state_dir: Path | None, taken: Container[str]
) -> dict[str, SiteApp]:
    """``fedhive agent --flower-app PATH`` (repeatable): one site per Flower project, by its name;
    its state in ``state_dir/<name>`` as for the agent's other apps."""
    sites: dict[str, SiteApp] = {}
    for folder in folders:
        name = load_flower_app(folder).name
        if name in taken or name in sites:
            raise ConfigError(f"--flower-app {folder}: an app named {name!r} is given twice")
        own_state = state_dir / state_folder_name(name) if state_dir is not None else None
        sites[name] = flower_site(client_id, folder, node, LocalData(), state_dir=own_state)
    return sites


def flower_session_app(ref: str, raw: dict[str, Any], session_file: Path) -> LoadedApp:
    """``app = "flower:PATH"`` in a session file (PATH relative to the file): the project, and in
    ``raw`` what its ServerApp would run wherever the file says nothing, as for a session started
    over the API: ``rounds``, ``strategy``, ``fraction`` and whether clients evaluate."""
    from fedhive.compat.flower import FLOWER_PREFIX, installed_flower_project

    given = ref.removeprefix(FLOWER_PREFIX).strip()
    if not given:
        raise ConfigError('app = "flower:PATH" needs the Flower project\'s folder')
    project = installed_flower_project(session_file.parent / given)  # an absolute PATH stays as it is
    mapping = project.strategy
    if project.num_rounds is not None:
        raw.setdefault("rounds", project.num_rounds)
    raw.setdefault("strategy", mapping.spec)
    if mapping.fraction is not None:
        raw.setdefault("fraction", mapping.fraction)
    if not mapping.evaluates:
        raw.setdefault("evaluate_every", 0)
    return project.loaded
