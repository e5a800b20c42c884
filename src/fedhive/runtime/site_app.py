"""The app a node runs, bound to its site: the site's settings, its state and the session's checks.

A site runs only the app installed on its own machine. The session names the app and the digest
of its code (``SessionConfig.app`` / ``app_digest``, from the coordinator's own copy); a site whose
app differs refuses the session in one line (``AppMismatch``), which the coordinator logs with
the client's id. Nothing in a message can make a site load or run other code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedhive.app.app_trainer import AppTrainer
from fedhive.app.contract import Context, EvalResult
from fedhive.app.learner import Trainer
from fedhive.app.loader import LoadedApp
from fedhive.app.local_dp import LocalDP
from fedhive.app.state_store import StateStore
from fedhive.core.params import Params
from fedhive.errors import AppError
from fedhive.runtime.evaluation import check_rules
from fedhive.runtime.session_config import SessionConfig

SERVER_ID = "server"


class AppMismatch(AppError):
    """The session's app is not the one installed at this site."""


@dataclass
class SiteApp:
    """One client's app: ``trainer_for(config)`` is the ``ClientNode``'s trainer factory."""

    loaded: LoadedApp
    client_id: str
    node: Mapping[str, Any] = field(default_factory=dict)
    state_dir: Path | None = None  # None: ``ctx.state`` lives in memory (virtual clients)
    num_examples: int = 0  # announced at registration, where the site knows it (the built-in app)
    label_counts: dict[str, int] = field(default_factory=dict)
    _ctx: Context | None = field(default=None, init=False, repr=False)

    @property
    def ctx(self) -> Context:
        if self._ctx is None:  # state read once per process: it changes only through this client
            state = StateStore(self.state_dir).load() if self.state_dir is not None else {}
            self._ctx = Context(self.client_id, self.node, state)
        return self._ctx

    def trainer_for(self, config: SessionConfig) -> Trainer:
        check_same_app(self.loaded, config, self.client_id)
        store = StateStore(self.state_dir) if self.state_dir is not None else None
        trainer = AppTrainer(
            self.loaded.app,
            self.ctx,
            config.app_config(),
            name=self.loaded.name,
            state_store=store,
            pinned=config.run_config.keys(),
        )
        if config.local_dp_clip is None:
            return trainer
        # The site's own privacy, applied here so that every way a site runs (simulated, over a
        # broker, in a worker process, as an agent) sends only clipped and noised updates.
        return LocalDP(trainer, clip=config.local_dp_clip, noise=config.local_dp_noise, delta=config.local_dp_delta)


def check_same_app(loaded: LoadedApp, config: SessionConfig, who: str) -> None:
    if config.app_digest and config.app_digest != loaded.digest:
        raise AppMismatch(
            f"{who} refuses session {config.session_id}: its app {loaded.name!r} (code {loaded.short_digest}) is not "
            f"the session's {config.app!r} (code {config.app_digest[:12]}); install the same version of the app"
        )


def session_with_app(config: SessionConfig, loaded: LoadedApp) -> SessionConfig:
    """The session as the coordinator announces it: its app's name and digest, and the app's
    default run config under the session's own keys."""
    check_rules(config.metric_rules)  # the app, now loaded, has registered its own rules
    run_config = {**loaded.run_config, **config.run_config}
    update: dict[str, object] = {"app": loaded.name, "app_digest": loaded.digest, "run_config": run_config}
    if config.evaluate_every is None:
        # Clients judge the global model when the app can and nothing on the server side does.
        app = loaded.app
        update["evaluate_every"] = 1 if app.has("evaluate") and not app.has("central_evaluate") else 0
    return config.model_copy(update=update)


@dataclass
class ServerApp:
    """The app on the coordinator's side: the initial model and, if the app has one, the central
    evaluation of the global model on data the server side holds (``central_evaluate``)."""

    loaded: LoadedApp
    config: SessionConfig
    node: Mapping[str, Any] = field(default_factory=dict)

    def _trainer(self) -> AppTrainer:
        ctx = Context(SERVER_ID, self.node)
        return AppTrainer(self.loaded.app, ctx, self.config.app_config(), name=self.loaded.name)

    def initial_params(self) -> Params:
        return self._trainer().initial_params(self.config.seed)

    def evaluator(self) -> CentralEvaluator | None:
        if not self.loaded.app.has("central_evaluate"):
            return None
        return CentralEvaluator(self._trainer())


class CentralEvaluator:
    """The coordinator's evaluator (``Trainer.evaluate``) for an app with ``central_evaluate``."""

    def __init__(self, trainer: AppTrainer) -> None:
        self._trainer = trainer
        self.evaluate: Callable[[Params], EvalResult] = trainer.central_evaluate
