"""Pick and build the trainer a model spec asks for."""

from __future__ import annotations

import numpy as np

from fedhive.app.learner import Trainer
from fedhive.learning.models import ModelSpec, parse_model_spec
from fedhive.learning.numpy_trainer import NumpyLogRegTrainer


def build_trainer(model_spec: str | ModelSpec, x: np.ndarray, y: np.ndarray, num_classes: int) -> Trainer:
    """``logreg-np`` gives the numpy trainer; every other spec a ``TorchTrainer``.

    Raises ``ConfigError`` for an unknown spec or one that does not fit the data (``cnn`` needs
    784 features) and ``DataError`` for unusable data.
    """
    spec = parse_model_spec(model_spec) if isinstance(model_spec, str) else model_spec
    if not spec.uses_torch:
        return NumpyLogRegTrainer(x, y, num_classes)
    spec.check_fits(int(np.shape(x)[1]) if np.ndim(x) == 2 else 0)
    # Imported here: torch takes seconds to import, and numpy-only runs never need it.
    from fedhive.learning.torch_trainer import TorchTrainer

    return TorchTrainer(spec, x, y, num_classes)
