"""Client-side (local) differential privacy (``app.local_dp``): what leaves a site is its change to
the global model clipped to ``C`` plus Gaussian noise of ``sigma * C``, from noise the coordinator
cannot regenerate, and the epsilon it reports is the exact Gaussian composition."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fedhive.app.learner import FitConfig, FitResult, ProgressFn
from fedhive.app.local_dp import LocalDP, gaussian_epsilon, privatise
from fedhive.cli.main import app
from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.runtime.session_config import make_config
from fedhive.strategies.privacy_accountant import PrivacyAccountant

BASE = Params({"w": np.zeros((50, 4), np.float32), "b": np.ones(4, np.float32)})


class Jump:
    """A trainer whose update moves every weight by ``step``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.param_spec = BASE.spec

    def initial_params(self, seed: int) -> Params:
        return BASE

    def fit(self, params: Params, config: FitConfig, progress: ProgressFn | None = None) -> FitResult:
        moved = Params({k: (v + np.float32(self.step)).astype(np.float32) for k, v in params.items()})
        return FitResult(moved, 10, {"loss": 1.0})

    def evaluate(self, params: Params) -> object:
        raise AssertionError("not used")


def change_norm(a: Params, b: Params) -> float:
    return math.sqrt(sum(float(np.sum((a[k].astype(np.float64) - b[k]) ** 2)) for k in a))


def test_without_noise_the_change_is_scaled_down_to_the_clip_and_keeps_its_direction() -> None:
    out = privatise(BASE, Jump(1.0).fit(BASE, FitConfig()).params, clip=2.0, noise=0.0, rng=np.random.default_rng())
    assert change_norm(out, BASE) == pytest.approx(2.0, rel=1e-6)
    assert out["w"].dtype == np.float32
    changes = np.concatenate([(out[k].astype(np.float64) - BASE[k]).ravel() for k in BASE])
    assert np.allclose(changes, changes[0])  # every coordinate moved alike, as in the update


def test_a_small_change_is_not_scaled_up() -> None:
    trained = Jump(0.001).fit(BASE, FitConfig()).params
    out = privatise(BASE, trained, clip=100.0, noise=0.0, rng=np.random.default_rng())
    assert change_norm(out, BASE) == pytest.approx(change_norm(trained, BASE), rel=1e-6)


def test_the_noise_has_the_standard_deviation_sigma_times_clip() -> None:
    big = Params({"w": np.zeros(200_000, np.float32)})
    out = privatise(big, big, clip=0.5, noise=3.0, rng=np.random.default_rng(7))
    assert float(np.std(out["w"])) == pytest.approx(1.5, rel=0.01)
    assert abs(float(np.mean(out["w"]))) < 0.02


def test_the_noise_comes_from_the_site_not_from_the_session_seed() -> None:
    """Two releases of the same update with the same fit configuration (the coordinator's seed)
    differ: noise the coordinator could regenerate would protect nothing."""
    site = LocalDP(Jump(1.0), clip=1.0, noise=1.0, delta=1e-5)
    first = site.fit(BASE, FitConfig(seed=3)).params
    second = site.fit(BASE, FitConfig(seed=3)).params
    assert not np.array_equal(first["w"], second["w"])


def test_each_release_reports_the_epsilon_spent_so_far() -> None:
    site = LocalDP(Jump(1.0), clip=1.0, noise=2.0, delta=1e-5)
    reported = [site.fit(BASE, FitConfig()).metrics["local_dp_epsilon"] for _ in range(3)]
    assert reported == [gaussian_epsilon(2.0, r, 1e-5) for r in (1, 2, 3)]
    assert reported[0] < reported[1] < reported[2]
    assert site.param_spec == BASE.spec  # the wrapped trainer's own attributes pass through


@pytest.mark.parametrize(("noise", "rounds"), [(1.0, 10), (0.5, 100), (2.0, 50), (5.0, 1)])
def test_the_epsilon_is_the_exact_gaussian_composition_that_dp_accounting_finds(noise: float, rounds: int) -> None:
    ours = gaussian_epsilon(noise, rounds, 1e-5)
    assert ours == pytest.approx(PrivacyAccountant(noise, 1.0).epsilon_pld(rounds, 1e-5), rel=1e-6)


def test_no_noise_is_no_guarantee_and_no_release_costs_nothing() -> None:
    assert gaussian_epsilon(0.0, 5, 1e-5) == math.inf
    assert gaussian_epsilon(1.0, 0, 1e-5) == 0.0
    assert gaussian_epsilon(1e-3, 100, 1e-5) == math.inf  # beyond any meaningful epsilon


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="local_dp_clip"):
        make_config(local_dp_clip=0.0)
    with pytest.raises(ConfigError, match="local_dp_noise"):
        make_config(local_dp_clip=1.0, local_dp_noise=-1.0)


def test_a_simulated_session_with_local_dp_reports_each_sites_epsilon(tmp_path: Path) -> None:
    args = ["simulate", "--dataset", "digits", "--model", "logreg-np", "--clients", "4", "--rounds", "3",
            "--lr", "0.1", "--local-dp-clip", "5.0", "--local-dp-noise", "0.5", "--out", str(tmp_path),
            "--json"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    summary = json.loads(done.output.strip().splitlines()[-1])
    assert summary["rounds"] == 3
    rounds = (next(p for p in tmp_path.iterdir() if p.is_dir()) / "rounds.csv").read_text()
    header, *rows = rounds.splitlines()
    assert "local_dp_epsilon" in header
    column = header.split(",").index(next(h for h in header.split(",") if "local_dp_epsilon" in h))
    last = float(rows[-1].split(",")[column])
    assert last == pytest.approx(gaussian_epsilon(0.5, 3, 1e-5), rel=1e-6)  # every site took part in all 3
