"""Helpers for apps that train a scikit-learn estimator (linear models, MLPClassifier/Regressor).

``get_weights`` copies a fitted model's weights out; ``set_weights`` copies weights in, fitted or
not, so ``partial_fit`` (or ``fit`` with ``warm_start=True``) continues from them;
``init_weights`` gives a federation's first weights before any data is seen. See
``fedhive.learning.sklearn_weights`` for the supported estimators and the weight names::

    from sklearn.linear_model import SGDClassifier
    from fedhive.sklearn import get_weights, init_weights, set_weights

    model = SGDClassifier(loss="log_loss", random_state=0)
    weights = init_weights(model, n_features=20, classes=[0, 1, 2])  # in the app's init
    set_weights(model, weights, classes=[0, 1, 2])  # in each round, then train locally
    model.partial_fit(x, y)
    return get_weights(model)
"""

from fedhive.learning.sklearn_weights import get_weights, init_weights, set_weights

__all__ = ["get_weights", "init_weights", "set_weights"]
