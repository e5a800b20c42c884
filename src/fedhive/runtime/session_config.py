"""A session's settings: what every node of a session agrees on. Loaded from TOML, the API or CLI."""

from __future__ import annotations

import math
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedhive.app.learner import FitConfig
from fedhive.core.compression import parse_compression
from fedhive.errors import ConfigError

RunValue = str | int | float | bool


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12], min_length=1, max_length=64)
    rounds: int = Field(default=20, ge=1, le=100_000)
    min_clients: int = Field(default=2, ge=1, description="clients that must be ONLINE before round 1")
    min_round_clients: int | None = Field(
        default=None,
        ge=1,
        description="once the session runs, clients that must be ONLINE for a round to start (at most min_clients; "
        "default: min_clients, so one client lost ends the session)",
    )
    fraction: float = Field(default=1.0, gt=0, le=1, description="share of ONLINE clients selected per round")
    max_clients: int | None = Field(default=None, ge=1, description="cap on clients selected per round")
    quorum: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="share of selected clients whose valid updates a round needs at its deadline",
    )
    round_timeout_s: float = Field(default=300.0, gt=0)
    registration_timeout_s: float = Field(default=120.0, gt=0)
    heartbeat_interval_s: float | None = Field(default=5.0, gt=0)
    heartbeat_timeout_s: float | None = Field(default=20.0, gt=0)
    max_round_retries: int = Field(default=2, ge=0)
    epochs: int = Field(default=1, ge=1, le=10_000)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    proximal_mu: float = Field(default=0.0, ge=0)
    local_steps: int | None = Field(default=None, ge=1, description="cap on minibatch steps per round")
    seed: int = 0
    model: str = "simple-dnn"
    strategy: str = "fedavg"
    compression: str = Field(default="none", description="update compression: none, float16, int8 or topk:F")
    max_update_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    # What one client can do to a round (strategies/screening.py): its weight, and how far its
    # update may move the model.
    examples_cap_factor: float | None = Field(
        default=1.0,
        ge=1,
        description="a client's weight in aggregation is at most this multiple of the example count it registered "
        "with (none: not capped by it)",
    )
    max_examples_per_client: int | None = Field(
        default=None, ge=1, description="a ceiling on any client's weight in aggregation (its example count)"
    )
    max_update_norm: float | None = Field(
        default=None, gt=0, description="reject an update whose L2 distance from the global model is larger"
    )
    max_model_jump: float | None = Field(
        default=1000.0,
        gt=1,
        description="reject an update, or refuse a new global model, farther from the global model than this many "
        "times the model's scale (its L2 norm, at least the square root of its size): an exploded model",
    )
    # Secure aggregation (docs/secure_aggregation.md): the coordinator learns only the sum of updates.
    secure_aggregation: bool = Field(
        default=False, description="sum updates by secure aggregation: the coordinator learns only their sum"
    )
    secagg_clip: float = Field(
        default=4.0,
        gt=0,
        le=2**20,
        description="secure aggregation: each coordinate of an update's change from the global model is clipped "
        "to [-clip, clip]",
    )
    secagg_bits: int = Field(
        default=28,
        ge=8,
        le=40,
        description="secure aggregation: fraction bits of the fixed point; the mean is off by at most "
        "2**-(bits+1) per coordinate",
    )
    secagg_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="secure aggregation: share of each client's neighbours whose shares rebuild its secrets "
        "(ceil(share * neighbours), at least 2); fewer colluding neighbours learn nothing",
    )
    secagg_neighbours: int | None = Field(
        default=None,
        ge=1,
        description="secure aggregation (SecAgg+): each client pairs with, and shares its secrets among, this many "
        "others (none: the fewest that meet the failure bounds of docs/secure_aggregation.md for the round's "
        "clients; about log n)",
    )
    # Client-side differential privacy (app.local_dp): each site clips and noises its own update.
    local_dp_clip: float | None = Field(
        default=None,
        gt=0,
        description="local DP: each site scales its change to the global model down to this L2 norm and adds "
        "Gaussian noise before sending it (none: off)",
    )
    local_dp_noise: float = Field(
        default=1.0, ge=0, le=1000, description="local DP: noise standard deviation over local_dp_clip (sigma)"
    )
    local_dp_delta: float = Field(
        default=1e-5, gt=0, lt=1, description="local DP: the delta of the epsilon each site reports"
    )
    # Asynchronous, buffered aggregation (FedBuff; docs/async.md): clients train continuously and
    # every buffer_size accepted updates make a new global model version, which counts as a round.
    aggregation: Literal["sync", "async"] = Field(
        default="sync",
        description="sync: rounds of selected clients; async: clients train continuously and every buffer_size "
        "updates make a new model version (a round)",
    )
    buffer_size: int = Field(
        default=10, ge=1, le=100_000, description="async: accepted updates folded into each new model version"
    )
    max_staleness: int = Field(
        default=10,
        ge=0,
        le=1000,
        description="async: an update trained from a model more than this many versions old is rejected (the "
        "coordinator holds max_staleness + 1 model versions)",
    )
    staleness_weighting: Literal["constant", "polynomial"] = Field(
        default="polynomial",
        description="async: an update s versions stale weighs 1 (constant) or 1/(1+s)**staleness_exponent",
    )
    staleness_exponent: float = Field(default=0.5, ge=0, le=10, description="async: see staleness_weighting")
    data: dict[str, Any] = Field(default_factory=dict, description="what demo clients load (dataset, partition)")
    evaluate_every: int | None = Field(
        default=None,
        ge=0,
        description="federated evaluation every N rounds (and after the last); 0 never; default: every round for "
        "an app with evaluate and no central_evaluate",
    )
    fraction_evaluate: float = Field(default=1.0, gt=0, le=1, description="share of clients that evaluate")
    metric_rules: dict[str, str] = Field(
        default_factory=dict,
        description="how each evaluation metric is aggregated: mean (weighted, the default), sum, min, max, or a "
        "rule the app registers with fedhive.metric_rule",
    )
    key_metric: str | None = Field(
        default=None, max_length=64, description="judges the best round: default accuracy (max), else loss (min)"
    )
    mode: Literal["min", "max"] | None = Field(default=None, description="best is the min or max of key_metric")
    patience: int | None = Field(default=None, ge=1, description="stop after this many rounds without a new best")
    app: str = Field(default="builtin", max_length=200, description="the app's name (sites run their own install)")
    app_digest: str = Field(default="", max_length=64, description="sha256 of the app's code; sites must match it")
    run_config: dict[str, RunValue] = Field(
        default_factory=dict, description="the app's own settings (open keys), handed to it as `config`"
    )

    @field_validator("compression")
    @classmethod
    def _compression(cls, v: str) -> str:
        try:
            return parse_compression(v).name
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _check(self) -> SessionConfig:
        if (
            self.heartbeat_interval_s
            and self.heartbeat_timeout_s
            and self.heartbeat_timeout_s <= self.heartbeat_interval_s
        ):
            raise ValueError("heartbeat_timeout_s must be longer than heartbeat_interval_s")
        if self.secure_aggregation and self.compression != "none":
            raise ValueError("secure aggregation sums fixed-point updates: compression must be none")
        if self.secure_aggregation and self.secagg_clip * 2.0**self.secagg_bits >= 2.0**62:
            raise ValueError("secagg_clip * 2**secagg_bits must stay below 2**62 (64-bit fixed point)")
        if self.aggregation == "async" and self.secure_aggregation:
            raise ValueError("secure aggregation sums whole rounds: it cannot be used with aggregation = async")
        if self.min_round_clients is not None and self.min_round_clients > self.min_clients:
            raise ValueError("min_round_clients must not be more than min_clients")
        return self

    def round_floor(self) -> int:
        """Clients that must be ONLINE for a round of the running session to start."""
        return min(self.min_round_clients or self.min_clients, self.min_clients)

    @field_validator("run_config")
    @classmethod
    def _run_config(cls, v: dict[str, RunValue]) -> dict[str, RunValue]:
        if len(v) > 200 or any(not 0 < len(k) <= 64 for k in v):
            raise ValueError("run_config: at most 200 keys of 1 to 64 characters")
        return v

    def app_config(self) -> dict[str, Any]:
        """What an app's ``config`` holds besides ``round``: the session's training settings and,
        over them, the run config (an app's own ``lr`` in its run config is the one it gets)."""
        return {
            "session_id": self.session_id,
            "model": self.model,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "proximal_mu": self.proximal_mu,
            "local_steps": self.local_steps,
            "seed": self.seed,
            "session_seed": self.seed,
            "data": dict(self.data),
            **self.run_config,
        }

    def evaluates(self, round: int) -> bool:
        """Whether clients evaluate the global model after ``round`` (federated evaluation)."""
        every = self.evaluate_every or 0
        return every > 0 and (round % every == 0 or round == self.rounds)

    def fit_config(self, round: int, client_index: int) -> FitConfig:
        return FitConfig(
            momentum=self.momentum,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            proximal_mu=self.proximal_mu,
            max_steps=self.local_steps,
            seed=self.client_seed(round, client_index),
            round=round,
        )

    def client_seed(self, round: int, client_index: int) -> int:
        return derive_seed(self.seed, round, client_index)

    def selection_size(self, online: int) -> int:
        k = max(1, math.ceil(self.fraction * online))
        return min(k, self.max_clients) if self.max_clients else k

    def quorum_size(self, selected: int) -> int:
        return max(1, math.ceil(self.quorum * selected))


def derive_seed(seed: int, round: int, index: int) -> int:
    """A distinct, reproducible 31-bit seed per (session seed, round, client)."""
    return (seed * 1_000_003 + round * 9_176 + index * 7_919) % (2**31 - 1)


def make_config(**fields: Any) -> SessionConfig:
    """Build a config, turning validation errors into one readable ``ConfigError`` line."""
    try:
        return SessionConfig(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError(validation_message(exc)) from None


def validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    return f"{where}: {first['msg']} (got {first.get('input')!r})"
