"""What a Flower ``ServerApp`` would have done, read without running its rounds.

fedhive runs the rounds itself, so a ``ServerApp`` is never run to the end. Its ``main`` (Message
API) or ``server_fn`` (legacy) is called once with a ``Grid`` that stops the app the moment it
first talks to the federation: by then the app has built its strategy and its initial model and
handed them to Flower's own round loop (``Strategy.start`` or the legacy ``start_grid``). The
frames of that call hold them; ``ServerPlan`` keeps what fedhive needs: the strategy object (to map
it by name and settings), the initial weights, the number of rounds and the per-round config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedhive.compat.flower.records import from_array_record, from_parameters
from fedhive.core.params import Params
from fedhive.errors import AppError, ConfigError

MESSAGE_API, LEGACY = "message", "legacy"


@dataclass
class ServerPlan:
    style: str  # MESSAGE_API or LEGACY: how the server side speaks to the ClientApp
    strategy: Any  # the Flower strategy object, or None when the app used none fedhive could see
    initial: Params | None
    num_rounds: int | None
    train_config: dict[str, Any] = field(default_factory=dict)
    evaluate_config: dict[str, Any] = field(default_factory=dict)
    # Legacy strategies make each round's config with these (``on_fit_config_fn(round)``).
    on_fit_config: Callable[[int], Mapping[str, Any]] | None = None
    on_evaluate_config: Callable[[int], Mapping[str, Any]] | None = None

    def round_config(self, kind: str, server_round: int) -> dict[str, Any]:
        """The config Flower's server side sends with a ``train`` or ``evaluate`` message."""
        make = self.on_fit_config if kind == "train" else self.on_evaluate_config
        if make is not None:
            return {**make(server_round), "server-round": server_round}
        fixed = self.train_config if kind == "train" else self.evaluate_config
        return {**fixed, "server-round": server_round}

    def attr(self, name: str, default: Any) -> Any:
        return getattr(self.strategy, name, default)


class _Stopped(BaseException):
    # BaseException: a ServerApp's own `except Exception` must not swallow the stop.
    pass


class StoppingGrid(Grid):  # type: ignore[misc, unused-ignore]  # Grid is Any where mypy lacks flwr
    """A ``Grid`` whose every use stops the ``ServerApp`` that uses it (see the module docstring)."""

    def set_run(self, run: Any) -> None:
        raise _Stopped

    @property
    def run(self) -> Any:
        raise _Stopped

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        raise _Stopped

    def get_node_ids(self) -> Iterable[int]:
        raise _Stopped

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise _Stopped

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise _Stopped

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise _Stopped


def capture_server(server_app: ServerApp, context: Context, where: str) -> ServerPlan:
    """Call ``server_app`` until it first uses the federation and read its plan from the call."""
    flwr_log = logging.getLogger("flwr")
    level = flwr_log.level
    # Strategy.start's banner describes a run that fedhive, not Flower, is about to make.
    flwr_log.setLevel(logging.WARNING)
    try:
        server_app(StoppingGrid(), context)
    except _Stopped as stop:
        return _plan_from(stop.__traceback__, where)
    except Exception as exc:
        raise AppError(f"{where}: the ServerApp raised {type(exc).__name__}: {exc}") from None
    finally:
        flwr_log.setLevel(level)
    raise ConfigError(f"{where}: the ServerApp returned without starting a strategy; fedhive found no plan in it")


def _plan_from(tb: TracebackType | None, where: str) -> ServerPlan:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):  # innermost first: the round loop that was about to send
        local = frame.f_locals
        name = frame.f_code.co_name
        if name == "start" and isinstance(local.get("self"), Strategy):
            return _message_plan(local)
        if name == "start_grid":
            return _legacy_plan(local)
    raise ConfigError(
        f"{where}: the ServerApp talks to the federation outside a Flower strategy; fedhive cannot map it"
    )


def _message_plan(local: Mapping[str, Any]) -> ServerPlan:
    arrays = local.get("initial_arrays")
    return ServerPlan(
        MESSAGE_API,
        local["self"],
        from_array_record(arrays) if isinstance(arrays, ArrayRecord) and len(arrays) else None,
        int(local.get("num_rounds") or 0) or None,
        _config(local.get("train_config")),
        _config(local.get("evaluate_config")),
    )


def _legacy_plan(local: Mapping[str, Any]) -> ServerPlan:
    from flwr.server.strategy import FedAvg

    strategy = local.get("strategy") or FedAvg()  # start_grid's own default
    config = local.get("config")
    initial = getattr(strategy, "initial_parameters", None)
    return ServerPlan(
        LEGACY,
        strategy,
        from_parameters(initial) if initial is not None and initial.tensors else None,
        int(getattr(config, "num_rounds", 1)),
        on_fit_config=getattr(strategy, "on_fit_config_fn", None),
        on_evaluate_config=getattr(strategy, "on_evaluate_config_fn", None),
    )


def _config(record: object) -> dict[str, Any]:
    return dict(record) if isinstance(record, ConfigRecord) else {}
