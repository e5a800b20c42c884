"""``ClientApp``: user code registered with decorators, or a class with the same methods.

    app = fedhive.ClientApp()

    @app.init
    def init(weights, config, ctx):            # the initial model (weights is empty)
        return fedhive.torch.get_weights(Net())

    @app.train
    def train(weights, config, ctx):           # -> TrainResult(weights, num_examples, metrics)
        ...

    @app.evaluate
    def evaluate(weights, config, ctx):        # -> EvalResult(num_examples, metrics)
        ...

A class with ``init``/``train``/``evaluate`` methods of the same signatures is the same contract
(``ClientApp.from_object``; the loader does it for you). ``central_evaluate`` is optional: it
evaluates the global model on data the *server side* holds (a held-out set in simulation or
benchmarks); a federation without it evaluates on the clients' own data.

The runtime calls an app only through ``AppCalls`` (``fedhive.app.app_trainer``), which checks
every value that comes back: a user's mistake is one line that names the call and the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from fedhive.app.contract import Context, EvalResult, TrainResult, Weights
from fedhive.errors import AppError

InitFn = Callable[[Weights, Mapping[str, Any], Context], Mapping[str, Any]]
TrainFn = Callable[[Weights, Mapping[str, Any], Context], TrainResult]
EvalFn = Callable[[Weights, Mapping[str, Any], Context], EvalResult]
F = TypeVar("F", bound=Callable[..., Any])

HOOKS = ("init", "train", "evaluate", "central_evaluate")


class ClientApp:
    """A federated client's code: ``init``, ``train`` and optionally ``evaluate`` and
    ``central_evaluate``, each ``(weights, config, ctx)``."""

    def __init__(
        self,
        *,
        init: InitFn | None = None,
        train: TrainFn | None = None,
        evaluate: EvalFn | None = None,
        central_evaluate: EvalFn | None = None,
    ) -> None:
        self._hooks: dict[str, Callable[..., Any] | None] = {
            "init": init,
            "train": train,
            "evaluate": evaluate,
            "central_evaluate": central_evaluate,
        }

    # Decorators: each registers the function and returns it unchanged.
    def init(self, fn: F) -> F:
        return self._register("init", fn)

    def train(self, fn: F) -> F:
        return self._register("train", fn)

    def evaluate(self, fn: F) -> F:
        return self._register("evaluate", fn)

    def central_evaluate(self, fn: F) -> F:
        return self._register("central_evaluate", fn)

    def _register(self, hook: str, fn: F) -> F:
        if not callable(fn):
            raise AppError(f"@app.{hook} decorates a function, got {type(fn).__name__}")
        if self._hooks[hook] is not None:
            raise AppError(f"@app.{hook} is registered twice")
        self._hooks[hook] = fn
        return fn

    def hook(self, name: str) -> Callable[..., Any] | None:
        """The function registered for ``name`` (one of ``HOOKS``), or None."""
        return self._hooks[name]

    def has(self, name: str) -> bool:
        return self._hooks.get(name) is not None

    @classmethod
    def from_object(cls, obj: object) -> ClientApp:
        """A ``ClientApp`` from an instance with ``init``/``train``/``evaluate`` methods (the class
        style; a Flower ``NumPyClient`` ports by renaming ``fit`` to ``train``)."""
        if isinstance(obj, ClientApp):
            return obj
        hooks = {name: getattr(obj, name, None) for name in HOOKS}
        for name, fn in hooks.items():
            if fn is not None and not callable(fn):
                raise AppError(f"{type(obj).__name__}.{name} is not a method")
        return cls(**hooks)

    def check_complete(self, where: str) -> None:
        missing = [h for h in ("init", "train") if not self.has(h)]
        if missing:
            raise AppError(f"{where} has no {' and no '.join(missing)}: an app needs @app.init and @app.train")
