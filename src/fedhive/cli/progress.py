"""Rich progress bar and per-round table for a session, fed by bus events."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus


class SessionProgress:
    def __init__(self, console: Console, rounds: int, *, start_round: int = 1) -> None:
        self.console = console
        self.rows: list[ev.RoundCompleted] = []
        self._progress = Progress(
            TextColumn("[bold]round[/]"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task(
            "rounds", total=rounds, completed=start_round - 1, status="waiting for clients"
        )

    def __enter__(self) -> SessionProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def attach(self, bus: EventBus) -> None:
        bus.on(ev.RoundStarted, self._on_round_started)
        bus.on(ev.UpdateAccepted, self._on_update)
        bus.on(ev.RoundCompleted, self._on_round)
        bus.on(ev.RoundRetried, self._on_retry)

    def _on_round_started(self, e: ev.RoundStarted) -> None:
        self._selected = len(e.selected)
        self._received = 0
        retry = f" (retry {e.attempt})" if e.attempt else ""
        self._progress.update(self._task, status=f"training on {len(e.selected)} clients{retry}")

    def _on_update(self, e: ev.UpdateAccepted) -> None:
        self._received += 1
        self._progress.update(self._task, status=f"updates {self._received}/{self._selected}")

    def _on_retry(self, e: ev.RoundRetried) -> None:
        self.console.print(f"[yellow]round {e.round} retried:[/] {e.reason}")

    def _on_round(self, e: ev.RoundCompleted) -> None:
        self.rows.append(e)
        name = next(iter(self._metric_names()), None)
        value = e.metrics.get(name) if name else None
        self._progress.update(self._task, advance=1, status=f"{name} {value:.4f}" if value is not None else "")

    def _metric_names(self) -> list[str]:
        """The global metrics the rounds report (an app's own: r2, mse, ...), accuracy and loss
        first, at most four."""
        seen = dict.fromkeys(name for r in self.rows for name in r.metrics)
        first = [m for m in ("accuracy", "loss") if m in seen]
        return (first + [m for m in seen if m not in first])[:4]

    def table(self) -> Table:
        t = Table(title="rounds", show_lines=False)
        names = self._metric_names()
        train = any("loss" in r.train_metrics for r in self.rows)
        for col in ("round", *names, *(["train loss"] if train else []), "updates", "seconds"):
            t.add_column(col, justify="right")
        for r in self.rows:
            t.add_row(
                str(r.round),
                *(_fmt(r.metrics.get(m)) for m in names),
                *([_fmt(r.train_metrics.get("loss"))] if train else []),
                f"{r.num_updates}/{r.num_selected}",
                f"{r.duration_s:.2f}",
            )
        return t


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
