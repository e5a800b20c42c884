"""``fedhive simulate --flower-app PATH``: a Flower project's settings, under the command line's.

The Flower app decides what its ServerApp would have: the strategy (mapped to fedhive's), the
share of clients trained each round, whether clients evaluate and the number of rounds. An option
the user gives on the command line wins over each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from fedhive.app.loader import LoadedApp
from fedhive.errors import ConfigError

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
