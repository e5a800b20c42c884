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
        acc = e.metrics.get("accuracy")
        self._progress.update(self._task, advance=1, status=f"accuracy {acc:.4f}" if acc is not None else "")

    def table(self) -> Table:
        t = Table(title="rounds", show_lines=False)
        for col in ("round", "accuracy", "loss", "train loss", "updates", "seconds"):
            t.add_column(col, justify="right")
        for r in self.rows:
            t.add_row(
                str(r.round),
                _fmt(r.metrics.get("accuracy")),
                _fmt(r.metrics.get("loss")),
                _fmt(r.train_metrics.get("loss")),
                f"{r.num_updates}/{r.num_selected}",
                f"{r.duration_s:.2f}",
            )
        return t


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"
