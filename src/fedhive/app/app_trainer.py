"""``AppTrainer``: a user's ``ClientApp`` seen by the runtime as a ``Trainer``.

Every node (a virtual client in ``simulate``, a client process, a peer, a platform site) runs user
code through this one class, so every check is made in one place:

- the app gets read-only views of the global model: virtual clients of one process share it;
- ``config`` is the session's run config (open keys) plus this call's ``round`` and ``seed``;
- what comes back is checked: a ``TrainResult`` with numpy arrays, a whole example count and
  finite metrics; anything else is an ``AppError`` naming the call and the problem, which costs
  this client's update (with the reason) and never the round;
- ``ctx.state`` is saved after a call that leaves it non-empty (``StateStore``), so it survives a
  restart of the client process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np

from fedhive.app.client_app import ClientApp
from fedhive.app.contract import Context, EvalResult, TrainResult, checked_count, checked_metrics
from fedhive.app.learner import EpochProgress, FitConfig, FitResult, ProgressFn
from fedhive.app.state_store import StateStore
from fedhive.core.params import Params, ParamSpec
from fedhive.errors import AppError, FedhiveError

log = logging.getLogger("fedhive.app")

# The settings a round gives its clients (``FitConfig``), as an app's ``config`` names them.
_ROUND_SETTINGS = ("epochs", "batch_size", "lr", "momentum", "proximal_mu", "local_steps")


class AppTrainer:
    """One client's app: ``initial_params``, ``fit`` and ``evaluate`` as the runtime calls them."""

    def __init__(
        self,
        app: ClientApp,
        ctx: Context,
        run_config: Mapping[str, Any],
        *,
        name: str = "app",
        state_store: StateStore | None = None,
        pinned: Collection[str] = (),
    ) -> None:
        """``pinned``: keys the run config sets itself, which the round's settings never override."""
        self.app = app
        self.ctx = ctx
        self.name = name
        self._run_config = dict(run_config)
        self._store = state_store
        self._spec: ParamSpec | None = None
        self._pinned = frozenset(pinned)
        self._pins_a_setting = bool(self._pinned) and not self._pinned.isdisjoint(_ROUND_SETTINGS)

    @property
    def param_spec(self) -> ParamSpec:
        """The spec of the weights this client's ``init`` gives: compared with the session's model
        when the client is enabled, so a model that does not fit this site fails before round 1."""
        if self._spec is None:
            self._spec = self.initial_params(int(self._run_config.get("seed", 0))).spec
        return self._spec

    def config(self, **call: Any) -> dict[str, Any]:
        return {**self._run_config, **call}

    def initial_params(self, seed: int) -> Params:
        fn = self.app.hook("init")
        if fn is None:
            raise AppError(f"{self.name} has no init: an app needs @app.init (the initial weights)")
        weights = self._call("init", fn, Params(), self.config(round=0, seed=seed))
        return as_params(weights, where=f"{self.name} init")

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        fn = self.app.hook("train")
        if fn is None:
            raise AppError(f"{self.name} has no train: an app needs @app.train")
        # The round's settings (a strategy may set some: FedProx's mu) over the session's, unless
        # the run config pins a key; this call's round and seed always. The keys in the order of
        # ``_ROUND_SETTINGS``; one dict display when nothing is pinned (it runs for every client).
        if not self._pins_a_setting:
            run = {
                **self._run_config,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "lr": config.lr,
                "momentum": config.momentum,
                "proximal_mu": config.proximal_mu,
                "local_steps": config.max_steps,
                "round": config.round,
                "seed": config.seed,
            }
        else:
            run = dict(self._run_config)
            settings = (config.epochs, config.batch_size, config.lr, config.momentum, config.proximal_mu)
            for key, value in zip(_ROUND_SETTINGS, (*settings, config.max_steps), strict=True):
                if key not in self._pinned:
                    run[key] = value
            run["round"], run["seed"] = config.round, config.seed
        self.ctx._progress = _progress_sink(progress) if progress is not None else None
        try:
            result = self._call("train", fn, read_only(params), run)
        finally:
            self.ctx._progress = None
        where = f"{self.name} train"
        if not isinstance(result, TrainResult):
            raise AppError(f"{where} returned {type(result).__name__}, not a fedhive.TrainResult")
        weights = as_params(result.weights, where=where)
        count = checked_count(result.num_examples, where=where)
        return FitResult(weights, count, checked_metrics(result.metrics, where=where))

    def evaluate(self, params: Params) -> EvalResult:
        return self._evaluate("evaluate", params)

    def central_evaluate(self, params: Params) -> EvalResult:
        return self._evaluate("central_evaluate", params)

    def _evaluate(self, hook: str, params: Params) -> EvalResult:
        fn = self.app.hook(hook)
        if fn is None:
            raise AppError(f"{self.name} has no {hook}")
        result = self._call(hook, fn, read_only(params), self.config(seed=int(self._run_config.get("seed", 0))))
        where = f"{self.name} {hook}"
        if not isinstance(result, EvalResult):
            raise AppError(f"{where} returned {type(result).__name__}, not a fedhive.EvalResult")
        return EvalResult(checked_count(result.num_examples, where=where), checked_metrics(result.metrics, where=where))

    def _call(self, hook: str, fn: Callable[..., Any], weights: Params, config: dict[str, Any]) -> Any:
        try:
            result = fn(weights, config, self.ctx)
        except FedhiveError:
            raise  # already one line that names the problem (a missing ctx.node key, ...)
        except Exception as exc:
            # The user's own bug: their traceback in the log, one line for the round's records.
            log.warning("%s: %s of %s raised", self.ctx.client_id, hook, self.name, exc_info=True)
            raise AppError(f"{self.name} {hook} raised {type(exc).__name__}: {exc}") from exc
        if self._store is not None and self.ctx.state:
            self._store.save(self.ctx.state)
        return result


_last_views: tuple[Params, Params] | None = None  # (params, its views): one round's model, many clients


def read_only(params: Params) -> Params:
    """Views of ``params`` that refuse writes: the global model is shared by every virtual client
    of a process, and one app changing it in place would change what the others train on. The
    views of the last model asked for are kept (by identity): every client of a round shares them."""
    global _last_views
    last = _last_views
    if last is not None and last[0] is params:
        return last[1]
    views = {}
    for name, arr in params.items():
        view = arr.view()
        view.flags.writeable = False
        views[name] = view
    result = Params(views)
    _last_views = (params, result)
    return result


def as_params(weights: object, *, where: str) -> Params:
    if type(weights) is Params and weights:
        for arr in weights.values():
            if type(arr) is not np.ndarray or not arr.flags.c_contiguous:
                break
        else:
            return weights  # already what the runtime wants: nothing to convert or copy
    if type(weights) is dict and weights:  # what most apps return: the same checks, at a third of the cost
        for name, arr in weights.items():
            # ndim: ``np.ascontiguousarray`` below makes a 0-d array 1-d, and so must this path
            if type(name) is not str or type(arr) is not np.ndarray or not arr.ndim or not arr.flags.c_contiguous:
                break
        else:
            return Params(weights)
    if not isinstance(weights, Mapping):
        raise AppError(f"{where} must give weights as a mapping of name -> numpy array, got {type(weights).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for name, arr in weights.items():
        if not isinstance(name, str):
            raise AppError(f"{where}: weight names must be strings, got {name!r}")
        if not isinstance(arr, np.ndarray):
            hint = " (fedhive.torch.get_weights converts a module's tensors)" if "Tensor" in type(arr).__name__ else ""
            raise AppError(f"{where}: weights[{name!r}] is a {type(arr).__name__}, not a numpy array{hint}")
        arrays[name] = np.ascontiguousarray(arr)
    if not arrays:
        raise AppError(f"{where} gave no weights")
    return Params(arrays)


def _progress_sink(progress: ProgressFn) -> Callable[[int, int, Mapping[str, float]], None]:
    def sink(epoch: int, epochs: int, metrics: Mapping[str, float]) -> None:
        progress(EpochProgress(int(epoch), int(epochs), _finite(metrics.get("loss")), _finite(metrics.get("accuracy"))))

    return sink


def _finite(value: object) -> float | None:
    if isinstance(value, int | float | np.number) and not isinstance(value, bool) and math.isfinite(float(value)):
        return float(value)
    return None
