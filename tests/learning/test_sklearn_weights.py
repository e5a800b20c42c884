"""fedhive.sklearn: weights out of and into linear models and MLPs, fitted or not; warm starts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LinearRegression, LogisticRegression, Perceptron, Ridge, SGDClassifier, SGDRegressor
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.tree import DecisionTreeClassifier

from fedhive.core.params import Params
from fedhive.errors import AppError, ConfigError
from fedhive.sklearn import get_weights, init_weights, set_weights

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

RNG = np.random.default_rng(0)
X = RNG.normal(size=(80, 5))
Y_REG = X @ RNG.normal(size=5) + 0.5 + RNG.normal(scale=0.1, size=80)
Y_MULTI = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)  # labels 0, 1, 2
Y_BINARY = np.where(X[:, 2] > 0, "yes", "no")
X2 = RNG.normal(size=(40, 5))  # a second local data set, for the step after set_weights
Y2_REG = X2 @ np.arange(5.0)
Y2_MULTI = (X2[:, 0] > 0).astype(int) + (X2[:, 1] > 0.5).astype(int)

MLP = {"hidden_layer_sizes": (6, 4), "max_iter": 20, "random_state": 0}
CASES: dict[str, tuple[Callable[[], Any], np.ndarray]] = {
    "SGDRegressor": (lambda: SGDRegressor(random_state=0), Y_REG),
    "SGDClassifier multiclass": (lambda: SGDClassifier(random_state=0), Y_MULTI),
    "SGDClassifier binary": (lambda: SGDClassifier(loss="log_loss", random_state=0), Y_BINARY),
    "SGDClassifier averaged": (lambda: SGDClassifier(average=True, random_state=0), Y_MULTI),
    "Perceptron": (lambda: Perceptron(random_state=0), Y_MULTI),
    "LogisticRegression multiclass": (lambda: LogisticRegression(), Y_MULTI),
    "LogisticRegression binary": (lambda: LogisticRegression(), Y_BINARY),
    "LinearRegression": (lambda: LinearRegression(), Y_REG),
    "Ridge": (lambda: Ridge(), Y_REG),
    "MLPRegressor": (lambda: MLPRegressor(**MLP), Y_REG),
    "MLPClassifier multiclass": (lambda: MLPClassifier(**MLP), Y_MULTI),
    "MLPClassifier binary": (lambda: MLPClassifier(**MLP), Y_BINARY),
}


def _bits(weights: Params) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    return {n: (a.dtype.name, a.shape, a.tobytes()) for n, a in weights.items()}


def _classes(y: np.ndarray) -> np.ndarray | None:
    return None if y.dtype.kind == "f" else np.unique(y)


@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_into_an_unfitted_model_is_bitwise(case: str) -> None:
    make, y = CASES[case]
    fitted = make().fit(X, y)
    weights = get_weights(fitted)
    assert all(a.dtype == np.float64 for a in weights.values())
    fresh = make()
    set_weights(fresh, weights, classes=_classes(y))
    assert _bits(get_weights(fresh)) == _bits(weights)
    np.testing.assert_array_equal(fresh.predict(X2), fitted.predict(X2))


def test_names_and_shapes() -> None:
    linear = get_weights(SGDClassifier(random_state=0).fit(X, Y_MULTI))
    assert {n: a.shape for n, a in linear.items()} == {"coef": (3, 5), "intercept": (3,)}
    mlp = get_weights(MLPClassifier(**MLP).fit(X, Y_MULTI))
    assert list(mlp) == ["coefs_0", "coefs_1", "coefs_2", "intercepts_0", "intercepts_1", "intercepts_2"]
    assert [mlp[f"coefs_{i}"].shape for i in range(3)] == [(5, 6), (6, 4), (4, 3)]


def test_neither_direction_aliases_the_model() -> None:
    model = SGDRegressor(random_state=0).fit(X, Y_REG)
    weights = get_weights(model)
    before = _bits(weights)
    model.coef_ += 1.0
    model.intercept_ += 1.0
    assert _bits(weights) == before
    set_weights(model, weights)
    weights["coef"][:] = 7.0
    assert not np.any(model.coef_ == 7.0)


def test_a_scalar_intercept_ships_as_shape_1_and_stays_scalar_in_the_model() -> None:
    model = LinearRegression().fit(X, Y_REG)
    weights = get_weights(model)
    assert weights["intercept"].shape == (1,)
    set_weights(model, Params({"coef": weights["coef"] * 2, "intercept": weights["intercept"] + 1}))
    assert np.ndim(model.intercept_) == 0 and model.intercept_ == weights["intercept"][0] + 1


def test_read_only_and_float32_arrays_are_copied_into_float64() -> None:
    model = SGDRegressor(random_state=0).fit(X, Y_REG)
    weights = {n: a.astype(np.float32) for n, a in get_weights(model).items()}
    for arr in weights.values():
        arr.flags.writeable = False
    set_weights(model, weights)
    assert model.coef_.dtype == np.float64 and model.coef_.flags.writeable
    model.partial_fit(X, Y_REG)  # sklearn trains in place: the arrays set must be its own


def test_sgd_regressor_partial_fit_continues_from_the_given_weights() -> None:
    def make() -> SGDRegressor:
        return SGDRegressor(learning_rate="constant", eta0=0.01, random_state=0)

    trained = make()
    for _ in range(3):
        trained.partial_fit(X, Y_REG)
    fresh = make()
    set_weights(fresh, get_weights(trained))
    trained.partial_fit(X2, Y2_REG)
    fresh.partial_fit(X2, Y2_REG)
    assert _bits(get_weights(fresh)) == _bits(get_weights(trained))


def test_a_fresh_sgd_regressor_steps_like_fit_from_coef_init() -> None:
    # Default schedule (invscaling, which reads t_): a fresh model starts it at the beginning.
    start = get_weights(SGDRegressor(random_state=1).fit(X, Y_REG))
    fresh = SGDRegressor(random_state=0)
    set_weights(fresh, start)
    fresh.partial_fit(X2, Y2_REG)
    reference = SGDRegressor(random_state=0, max_iter=1, tol=None)
    # Copies: sklearn trains straight into the coef_init array it is given.
    reference.fit(X2, Y2_REG, coef_init=start["coef"].copy(), intercept_init=start["intercept"].copy())
    assert _bits(get_weights(fresh)) == _bits(get_weights(reference))
    assert not np.array_equal(fresh.coef_, start["coef"])


def test_sgd_classifier_partial_fit_continues_from_the_given_weights() -> None:
    def make() -> SGDClassifier:
        return SGDClassifier(learning_rate="constant", eta0=0.01, random_state=0)

    trained = make().partial_fit(X, Y_MULTI, classes=[0, 1, 2])
    fresh = make()
    set_weights(fresh, get_weights(trained), classes=[0, 1, 2])
    trained.partial_fit(X2, Y2_MULTI)
    fresh.partial_fit(X2, Y2_MULTI)
    assert _bits(get_weights(fresh)) == _bits(get_weights(trained))


@pytest.mark.parametrize("make", [MLPRegressor, MLPClassifier])
def test_mlp_partial_fit_continues_from_the_given_weights(make: Callable[..., Any]) -> None:
    # Plain SGD without momentum keeps no optimizer state, so both models take the same step.
    params = {"hidden_layer_sizes": (6,), "solver": "sgd", "momentum": 0.0, "random_state": 0}
    y, y2 = (Y_REG, Y2_REG) if make is MLPRegressor else (Y_MULTI, Y2_MULTI)
    trained = make(max_iter=10, **params).fit(X, y)
    fresh = make(**params)
    set_weights(fresh, get_weights(trained), classes=_classes(y))
    trained.partial_fit(X2, y2)
    fresh.partial_fit(X2, y2)
    assert _bits(get_weights(fresh)) == _bits(get_weights(trained))


def test_warm_start_fit_starts_from_the_given_weights() -> None:
    start = get_weights(SGDRegressor(random_state=1).fit(X, Y_REG))
    warm = SGDRegressor(warm_start=True, max_iter=1, tol=None, random_state=0)
    set_weights(warm, start)
    warm.fit(X2, Y2_REG)
    reference = SGDRegressor(max_iter=1, tol=None, random_state=0)
    reference.fit(X2, Y2_REG, coef_init=start["coef"].copy(), intercept_init=start["intercept"].copy())
    np.testing.assert_array_equal(warm.coef_, reference.coef_)


def test_init_weights_linear_shapes_are_zeros() -> None:
    shapes = {
        "binary": init_weights(SGDClassifier(), 5, classes=["a", "b"]),
        "multiclass": init_weights(LogisticRegression(), 5, classes=[2, 0, 1, 0]),
        "regressor": init_weights(SGDRegressor(), 5),
        "two targets": init_weights(Ridge(), 5, n_outputs=2),
    }
    assert {k: {n: a.shape for n, a in w.items()} for k, w in shapes.items()} == {
        "binary": {"coef": (1, 5), "intercept": (1,)},
        "multiclass": {"coef": (3, 5), "intercept": (3,)},
        "regressor": {"coef": (5,), "intercept": (1,)},
        "two targets": {"coef": (2, 5), "intercept": (2,)},
    }
    assert all(not a.any() and a.dtype == np.float64 for w in shapes.values() for a in w.values())


def test_init_weights_mlp_is_seeded_and_leaves_the_model_alone() -> None:
    model = MLPClassifier(hidden_layer_sizes=(6,), random_state=3)
    weights = init_weights(model, 5, classes=[0, 1, 2])
    assert {n: a.shape for n, a in weights.items()} == {
        "coefs_0": (5, 6),
        "coefs_1": (6, 3),
        "intercepts_0": (6,),
        "intercepts_1": (3,),
    }
    assert weights["coefs_0"].any()  # sklearn's random init, not zeros: hidden units must differ
    assert _bits(init_weights(clone(model), 5, classes=[0, 1, 2])) == _bits(weights)
    assert not hasattr(model, "coefs_") and not hasattr(model, "classes_")
    regressor = init_weights(MLPRegressor(hidden_layer_sizes=(4,), random_state=0), 5, n_outputs=2)
    assert regressor["coefs_1"].shape == (4, 2)


@pytest.mark.parametrize("case", list(CASES))
def test_init_weights_then_set_weights_then_train(case: str) -> None:
    make, y = CASES[case]
    model = make()
    weights = init_weights(model, 5, classes=_classes(y))
    set_weights(model, weights, classes=_classes(y))
    assert _bits(get_weights(model)) == _bits(weights)
    (model.partial_fit if hasattr(model, "partial_fit") else model.fit)(X, y)
    assert model.predict(X).shape == (80,)


def test_init_weights_refuses_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="n_features must be a positive integer, got 0"):
        init_weights(SGDRegressor(), 0)
    with pytest.raises(ConfigError, match="n_outputs is for regressors"):
        init_weights(SGDClassifier(), 5, classes=[0, 1], n_outputs=2)
    with pytest.raises(AppError, match="init_weights: the SGDClassifier has no classes_ yet; pass classes="):
        init_weights(SGDClassifier(), 5)
    with pytest.raises(AppError, match="at least 2 classes"):
        init_weights(SGDClassifier(), 5, classes=[1, 1])


@pytest.mark.parametrize("make", [SGDClassifier, LogisticRegression, MLPClassifier])
def test_an_unfitted_classifier_needs_its_classes(make: Callable[[], Any]) -> None:
    weights = get_weights(make().fit(X, Y_MULTI))
    model = make()
    with pytest.raises(AppError, match=f"set_weights: the {make.__name__} has no classes_ yet; pass classes="):
        set_weights(model, weights)
    assert not hasattr(model, "coef_") and not hasattr(model, "coefs_")


def test_classes_must_match_a_fitted_classifier() -> None:
    model = SGDClassifier(random_state=0).fit(X, Y_MULTI)
    with pytest.raises(AppError, match=re.escape("classes [0, 1, 3] differ from the model's classes_ [0, 1, 2]")):
        set_weights(model, get_weights(model), classes=[0, 1, 3])
    with pytest.raises(AppError, match="classes= is for classifiers"):
        set_weights(SGDRegressor(), {"coef": np.zeros(5), "intercept": np.zeros(1)}, classes=[0, 1])


FITTED_MISMATCHES = {
    "shape": ({"coef": np.zeros((3, 4))}, "set_weights: tensor 'coef' has shape (3, 4), expected (3, 5)"),
    "missing": ({"coef": None}, "set_weights: missing tensor 'coef'"),
    "unexpected": ({"bias": np.zeros(3)}, "set_weights: unexpected tensor 'bias'"),
    "integers": ({"intercept": np.zeros(3, np.int64)}, "tensor 'intercept' has dtype int64, expected a floating dtype"),
}


@pytest.mark.parametrize("case", list(FITTED_MISMATCHES))
def test_a_mismatch_names_the_tensor_and_changes_nothing(case: str) -> None:
    change, message = FITTED_MISMATCHES[case]
    model = SGDClassifier(random_state=0).fit(X, Y_MULTI)
    before = _bits(get_weights(model))
    weights = {n: a + 1 for n, a in get_weights(model).items()} | change
    with pytest.raises(AppError, match=re.escape(message)):
        set_weights(model, {n: a for n, a in weights.items() if a is not None})
    assert _bits(get_weights(model)) == before


def test_an_unfitted_model_checks_the_weights_against_its_layers() -> None:
    weights = get_weights(MLPRegressor(**MLP).fit(X, Y_REG))
    model = MLPRegressor(**{**MLP, "hidden_layer_sizes": (6, 5)})
    with pytest.raises(AppError, match=re.escape("tensor 'coefs_1' has shape (6, 4), expected (6, 5)")):
        set_weights(model, weights)
    assert not hasattr(model, "coefs_")
    with pytest.raises(AppError, match=re.escape("tensor 'coef' has shape (5,), expected (3, 5)")):
        set_weights(SGDClassifier(), {"coef": np.zeros(5), "intercept": np.zeros(3)}, classes=[0, 1, 2])


def test_unsupported_and_unfitted_models_are_named() -> None:
    with pytest.raises(AppError, match="DecisionTreeClassifier is not supported"):
        get_weights(DecisionTreeClassifier())
    with pytest.raises(AppError, match="get_weights: the SGDRegressor is not fitted"):
        get_weights(SGDRegressor())
    with pytest.raises(AppError, match="MLPRegressor is not fitted"):
        get_weights(MLPRegressor())
