"""fedhive: federated learning, one engine for every topology, built around your own code.

The public API is what this module exports (``__all__``); every other module is private and may
change. A client app is written once and runs unchanged in ``fedhive simulate``, as client
processes over RabbitMQ, behind combiners and as decentralised peers::

    import fedhive

    app = fedhive.ClientApp()

    @app.init
    def init(weights, config, ctx):
        return {"w": np.zeros(10, np.float32)}

    @app.train
    def train(weights, config, ctx):
        ...
        return fedhive.TrainResult(new_weights, num_examples=len(x), metrics={"loss": loss})

    @app.evaluate
    def evaluate(weights, config, ctx):
        return fedhive.EvalResult(num_examples=len(x), metrics={"mse": mse})

Helpers for the libraries users have: ``fedhive.torch`` (weights of a ``torch.nn.Module``, device
choice) and ``fedhive.sklearn`` (linear models and MLPs).
"""

from fedhive.app.client_app import ClientApp
from fedhive.app.contract import Context, EvalResult, TrainResult, Weights
from fedhive.app.loader import LoadedApp, load_app
from fedhive.errors import AppError, ConfigError, DataError, FedhiveError
from fedhive.runtime.evaluation import metric_rule

__version__ = "0.1.0"

__all__ = [
    "AppError",
    "ClientApp",
    "ConfigError",
    "Context",
    "DataError",
    "EvalResult",
    "FedhiveError",
    "LoadedApp",
    "TrainResult",
    "Weights",
    "__version__",
    "load_app",
    "metric_rule",
]


def __getattr__(name: str) -> object:
    # ``fedhive.torch`` and ``fedhive.sklearn`` on first use: importing torch takes seconds, and a
    # numpy app should not pay for it.
    if name in ("torch", "sklearn"):
        import importlib

        return importlib.import_module(f"fedhive.{name}")
    raise AttributeError(f"module 'fedhive' has no attribute {name!r}")
