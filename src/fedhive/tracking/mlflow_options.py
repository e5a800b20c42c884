"""What the MLflow flags of ``fedhive simulate``, ``serve``, ``coordinator``, ``combiner`` and ``peer`` turn into.

Tracking is on with ``--mlflow`` (the local store), ``--mlflow-tracking-uri URI`` or the variable
``FEDHIVE_MLFLOW_TRACKING_URI`` (a server URL such as ``http://mlflow:5000``, or any MLflow store
URI), or when a final model is to be registered (``--mlflow-register NAME``). The local store is a
SQLite file plus an artifact directory: ``./mlruns`` for ``simulate`` (shared by every run started
in that directory, so a later run can start from a model an earlier one registered) and the
platform's home for ``serve``. Nothing here imports mlflow until tracking or loading is asked for,
and then its absence is a one-line error naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fedhive.runtime.bus import EventBus
from fedhive.tracking.mlflow_model import import_mlflow
from fedhive.tracking.mlflow_registry import (
    USE_CASE_TAG,
    RegisteredModel,
    check_reachable,
    load_registered_model,
    parse_model_ref,
    redact,
)
from fedhive.tracking.mlflow_store import default_tracking_uri, start_tags
from fedhive.tracking.mlflow_tracker import MlflowTracker

SIMULATE_STORE = Path("mlruns")
ENV_VAR = "FEDHIVE_MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class MlflowOptions:
    tracking_uri: str | None = None  # explicit URI; None: the local store under ``local_dir``
    local: bool = False  # ``--mlflow``: track in the local store
    model: str | None = None  # ``NAME/VERSION`` to start from
    use_case: str | None = None  # checked on the loaded model, tagged on runs and the new version
    register: str | None = None  # register the final model under this name
    experiment: str = "fedhive"
    local_dir: Path = SIMULATE_STORE
    run_per_round: bool = False  # also a run per client per round (``MlflowTracker``)

    @property
    def tracking(self) -> bool:
        return self.local or self.tracking_uri is not None or self.register is not None

    @property
    def uri(self) -> str:
        return self.tracking_uri or default_tracking_uri(self.local_dir)

    def load(self) -> RegisteredModel | None:
        """Blocking. The registered model to start from, checked (see ``mlflow_registry``)."""
        if self.model is None:
            if self.use_case is not None and not self.tracking:
                import_mlflow()  # a use case means MLflow; say how to install it before training
            return None
        return load_registered_model(self.uri, parse_model_ref(self.model), use_case=self.use_case)

    def checked_uri(self) -> str | None:
        """Blocking (one bounded probe of a server): where to track, or None when tracking is off."""
        if not self.tracking:
            return None
        import_mlflow()
        check_reachable(self.uri)
        return self.uri

    def tracker(self, start: RegisteredModel | None = None) -> MlflowTracker | None:
        """Blocking (one bounded probe of a server). None when tracking is off."""
        if self.checked_uri() is None:
            return None
        tags = {USE_CASE_TAG: self.use_case} if self.use_case else {}
        if start is not None:
            tags = start_tags(start, self.use_case)
        return MlflowTracker(
            self.uri, experiment=self.experiment, register_as=self.register, tags=tags, run_per_round=self.run_per_round
        )

    def where(self) -> str:
        """The store, for messages (credentials removed)."""
        return redact(self.uri)


def session_observer(
    tracking_uri: str, *, register_as: str | None = None, run_per_round: bool = False
) -> Callable[[str, EventBus, Mapping[str, str]], None]:
    """Blocking (one bounded probe). The platform's hook: a tracker per session started, with
    the session's tags (its use case, the registered model it started from)."""
    import_mlflow()
    check_reachable(tracking_uri)

    def attach(session_id: str, bus: EventBus, tags: Mapping[str, str]) -> None:
        MlflowTracker(tracking_uri, register_as=register_as, tags=dict(tags), run_per_round=run_per_round).attach(bus)

    return attach
