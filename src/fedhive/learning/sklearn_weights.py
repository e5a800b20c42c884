"""Moving a scikit-learn estimator's weights in and out of fedhive's ``Params``.

Supported estimators:

* linear models, that is estimators built on ``sklearn.linear_model``'s bases and holding
  ``coef_``/``intercept_``: SGDClassifier, SGDRegressor, Perceptron, LogisticRegression,
  LinearRegression, Ridge, Lasso, ElasticNet, LinearSVC... Weights ``coef`` and ``intercept``.
  ``intercept`` is always an array: a model that holds a scalar intercept gets it back as one.
* MLPClassifier and MLPRegressor: ``coefs_0``, ``coefs_1``, ..., then ``intercepts_0``, ...

Arrays keep the dtype the model holds (float64 unless it was fitted on float32 data); an unfitted
model takes the given arrays' dtype (float32 or float64). Every call copies: the weights never
alias the model.

``init_weights`` gives a federation's first weights before any data is seen: zeros for linear
models, sklearn's own random initialisation for MLPs (on a clone: the model passed in is left
alone; deterministic when ``random_state`` is an int).

Warm start: ``set_weights`` works on an unfitted model too. It sets what ``predict`` and the
next ``partial_fit`` need (``coef_``/``intercept_``, ``classes_``, ``n_features_in_``; for MLPs
the layer set-up of sklearn's first ``partial_fit``), so ``partial_fit`` continues from the given
weights, as does ``fit`` with ``warm_start=True``. A plain ``fit`` starts over. The model's own
training state stays as it is: a fresh model starts its learning-rate schedule (``t_``) like
sklearn's first ``partial_fit``, a fitted one keeps its schedule and its optimizer state (Adam's
moments, momentum); use ``sklearn.base.clone`` for a fresh one. A classifier needs its classes:
pass ``classes=`` (every label of the federation) while it has no ``classes_``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import clone, is_classifier
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import unique_labels

from fedhive.core.params import Params
from fedhive.errors import AppError, ConfigError

Shapes = dict[str, tuple[int, ...]]
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))  # what sklearn computes in


def get_weights(model: Any) -> Params:
    """A copy of the fitted model's weights (see the module docstring for the names)."""
    mlp = _is_mlp(model, "get_weights")
    current = _current(model, mlp, "get_weights")
    if current is None:
        raise AppError(f"get_weights: the {_name(model)} is not fitted; fit it, set_weights it, or use init_weights")
    return Params({name: arr.copy() for name, arr in current.items()})


def set_weights(model: Any, weights: Mapping[str, np.ndarray], *, classes: ArrayLike | None = None) -> None:
    """Copy ``weights`` into the model, fitted or not; ``AppError`` names the first mismatch.
    ``classes`` is needed for a classifier without ``classes_``; given, it must match them."""
    mlp = _is_mlp(model, "set_weights")
    labels = _labels(model, classes, "set_weights")
    current = _current(model, mlp, "set_weights")
    if current is not None:
        shapes = {name: arr.shape for name, arr in current.items()}
        _check(weights, shapes)
        dtypes = {name: arr.dtype for name, arr in current.items()}
    else:
        n_features, outputs = _infer(model, mlp, weights, labels)
        shapes = _shapes(model, mlp, n_features, outputs)
        _check(weights, shapes)
        dtypes = {n: _fresh_dtype(weights[n]) for n in shapes}
    new = {name: np.array(weights[name], dtype=dtypes[name], order="C", copy=True) for name in shapes}
    if mlp:
        _set_mlp(model, new, labels, fitted=current is not None)
    else:
        _set_linear(model, new, labels)


def init_weights(model: Any, n_features: int, classes: ArrayLike | None = None, n_outputs: int | None = None) -> Params:
    """First weights for ``model`` before any data: ``classes`` for a classifier (every label of
    the federation), ``n_outputs`` for a multi-output regressor. ``model`` is not changed."""
    mlp = _is_mlp(model, "init_weights")
    if isinstance(n_features, bool) or not isinstance(n_features, int | np.integer) or n_features < 1:
        raise ConfigError(f"init_weights: n_features must be a positive integer, got {n_features!r}")
    labels = _labels(model, classes, "init_weights")
    if labels is not None:
        if n_outputs is not None:
            raise ConfigError("init_weights: n_outputs is for regressors; a classifier's outputs follow its classes")
        outputs: int | None = 1 if len(labels) == 2 else len(labels)  # binary: one score, as sklearn
    elif n_outputs is None or n_outputs == 1:
        outputs = None  # single output: sklearn's 1-D coef_
    elif isinstance(n_outputs, bool) or not isinstance(n_outputs, int | np.integer) or n_outputs < 1:
        raise ConfigError(f"init_weights: n_outputs must be a positive integer, got {n_outputs!r}")
    else:
        outputs = int(n_outputs)
    if not mlp:
        return Params({name: np.zeros(shape) for name, shape in _shapes(model, mlp, int(n_features), outputs).items()})
    fresh = clone(model)
    _prepare_mlp(fresh, int(n_features), outputs or 1, labels, np.dtype(np.float64))
    return get_weights(fresh)


def _is_mlp(model: Any, what: str) -> bool:
    if isinstance(model, MLPClassifier | MLPRegressor):
        return True
    if any(cls.__module__.startswith("sklearn.linear_model") for cls in type(model).__mro__):
        return False
    raise AppError(
        f"{what}: {_name(model)} is not supported; use a linear model with coef_/intercept_ "
        "(SGDClassifier, SGDRegressor, LogisticRegression, Ridge...) or MLPClassifier/MLPRegressor"
    )


def _current(model: Any, mlp: bool, what: str) -> dict[str, np.ndarray] | None:
    """The model's arrays under fedhive's names (not copies), or None when it is not fitted."""
    if mlp:
        coefs, intercepts = getattr(model, "coefs_", None), getattr(model, "intercepts_", None)
        if coefs is None or intercepts is None:
            return None
        out = {f"coefs_{i}": c for i, c in enumerate(coefs)}
        return out | {f"intercepts_{i}": b for i, b in enumerate(intercepts)}
    coef = getattr(model, "coef_", None)
    if coef is None:  # SGD's fit sets coef_ = None before it starts
        return None
    if not isinstance(coef, np.ndarray):  # after sparsify(): a scipy matrix
        raise AppError(f"{what}: the {_name(model)}'s coef_ is a {type(coef).__name__}; call densify() first")
    # LinearRegression and friends hold a float intercept for one target: ship it as shape (1,).
    return {"coef": coef, "intercept": np.atleast_1d(np.asarray(getattr(model, "intercept_", 0.0)))}


def _labels(model: Any, classes: ArrayLike | None, what: str) -> np.ndarray | None:
    own = getattr(model, "classes_", None)
    if not is_classifier(model):
        if classes is not None:
            raise AppError(f"{what}: classes= is for classifiers, and the {_name(model)} is a regressor")
        return None
    if classes is None:
        if own is None:
            raise AppError(f"{what}: the {_name(model)} has no classes_ yet; pass classes= with every label")
        return np.asarray(own)
    labels: np.ndarray = unique_labels(np.asarray(classes))  # sorted and unique, as sklearn keeps them
    if len(labels) < 2:
        raise AppError(f"{what}: a classifier needs at least 2 classes, got {labels.tolist()}")
    if own is not None and not np.array_equal(own, labels):
        raise AppError(f"{what}: classes {labels.tolist()} differ from the model's classes_ {np.asarray(own).tolist()}")
    return labels


def _hidden(model: Any) -> list[int]:
    sizes = model.hidden_layer_sizes
    return [int(s) for s in sizes] if hasattr(sizes, "__iter__") else [int(sizes)]


def _shapes(model: Any, mlp: bool, n_features: int, outputs: int | None) -> Shapes:
    """Expected shapes; ``outputs`` None means one regression target (a 1-D ``coef``)."""
    if mlp:
        units = [n_features, *_hidden(model), outputs or 1]
        shapes: Shapes = {f"coefs_{i}": (units[i], units[i + 1]) for i in range(len(units) - 1)}
        return shapes | {f"intercepts_{i}": (units[i + 1],) for i in range(len(units) - 1)}
    if outputs is None:
        return {"coef": (n_features,), "intercept": (1,)}
    return {"coef": (outputs, n_features), "intercept": (outputs,)}


def _infer(
    model: Any, mlp: bool, weights: Mapping[str, np.ndarray], labels: np.ndarray | None
) -> tuple[int, int | None]:
    """(n_features, outputs) for an unfitted model, read off the weights it is given."""
    first = _tensor(weights, "coefs_0" if mlp else "coef", (2,) if mlp else (1, 2))
    n_features = first.shape[0] if mlp else first.shape[-1]
    if labels is not None:
        return n_features, 1 if len(labels) == 2 else len(labels)
    if mlp:
        return n_features, _tensor(weights, f"coefs_{len(_hidden(model))}", (2,)).shape[1]
    return n_features, None if first.ndim == 1 else first.shape[0]


def _tensor(weights: Mapping[str, np.ndarray], name: str, ndims: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise AppError(f"set_weights: missing tensor {name!r}")
    arr = weights[name]
    if not isinstance(arr, np.ndarray) or arr.ndim not in ndims:
        got = f"shape {arr.shape}" if isinstance(arr, np.ndarray) else f"a {type(arr).__name__}"
        raise AppError(f"set_weights: tensor {name!r} has {got}, expected {' or '.join(map(str, ndims))} dimensions")
    return arr


def _fresh_dtype(arr: np.ndarray) -> np.dtype[Any]:
    # An unfitted model takes the federation's dtype, so get_weights hands back what it was given;
    # float16 and wider floats become float64, which sklearn computes in.
    return arr.dtype if arr.dtype in _NATIVE_FLOATS else np.dtype(np.float64)


def _check(weights: Mapping[str, np.ndarray], shapes: Shapes) -> None:
    for name, shape in shapes.items():
        if name not in weights:
            raise AppError(f"set_weights: missing tensor {name!r}")
        arr = weights[name]
        if not isinstance(arr, np.ndarray):
            raise AppError(f"set_weights: tensor {name!r} is a {type(arr).__name__}, not a numpy array")
        if arr.dtype.kind != "f":
            raise AppError(f"set_weights: tensor {name!r} has dtype {arr.dtype.name}, expected a floating dtype")
        if arr.shape != shape:
            raise AppError(f"set_weights: tensor {name!r} has shape {arr.shape}, expected {shape}")
    for name in weights:
        if name not in shapes:
            raise AppError(f"set_weights: unexpected tensor {name!r}")


def _set_linear(model: Any, new: dict[str, np.ndarray], labels: np.ndarray | None) -> None:
    coef, intercept = new["coef"], new["intercept"]
    # Keep the model's own convention: a scalar intercept stays a scalar.
    scalar = getattr(model, "intercept_", None) is not None and np.ndim(model.intercept_) == 0
    model.coef_ = coef
    model.intercept_ = intercept[0] if scalar else intercept
    if labels is not None:
        model.classes_ = labels
    model.n_features_in_ = coef.shape[-1]
    if getattr(model, "average", False):
        # Averaged SGD trains the iterate _standard_* and reports the average as coef_: restart
        # both at the given point, or training would go on from the old iterate.
        model._standard_coef, model._standard_intercept = coef, intercept
        model._average_coef, model._average_intercept = coef.copy(), intercept.copy()


def _set_mlp(model: Any, new: dict[str, np.ndarray], labels: np.ndarray | None, *, fitted: bool) -> None:
    layers = len(new) // 2
    coefs = [new[f"coefs_{i}"] for i in range(layers)]
    if not fitted:
        _prepare_mlp(model, coefs[0].shape[0], coefs[-1].shape[1], labels, coefs[0].dtype)
    model.coefs_ = coefs
    model.intercepts_ = [new[f"intercepts_{i}"] for i in range(layers)]
    # Early stopping restores the best weights seen: those must not predate these.
    model._best_coefs = [c.copy() for c in model.coefs_]
    model._best_intercepts = [b.copy() for b in model.intercepts_]


def _prepare_mlp(model: Any, n_features: int, outputs: int, labels: np.ndarray | None, dtype: np.dtype[Any]) -> None:
    """Set an unfitted MLP up as sklearn's first ``partial_fit`` does, without training it:
    label binarizer and ``classes_``, then sklearn's own ``_initialize`` (layer sizes, output
    activation, training counters, randomly initialised layers from ``random_state``)."""
    if labels is not None:
        binarizer = LabelBinarizer().fit(labels)
        model._label_binarizer = binarizer
        model.classes_ = binarizer.classes_
    model._random_state = check_random_state(model.random_state)
    model._initialize(np.zeros((1, outputs)), [n_features, *_hidden(model), outputs], dtype)
    model.n_features_in_ = n_features


def _name(model: Any) -> str:
    return type(model).__name__
