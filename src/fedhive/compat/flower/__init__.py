"""Run a Flower app unchanged on fedhive (the ``flower`` extra; docs/flower.md).

``load_flower_project(folder, overrides)`` reads a Flower project folder and returns its
``ClientApp`` as a fedhive app (``client_adapter``), with the number of rounds and the strategy
its ``ServerApp`` would have used (``server_capture``, ``strategy_map``). Flower itself is
imported only when a project is loaded.
"""

from fedhive.compat.flower.project import FLOWER_PREFIX, FlowerProject, installed_flower_project, load_flower_project
from fedhive.compat.flower.version import SUPPORTED, check_version, require_flower

__all__ = [
    "FLOWER_PREFIX",
    "SUPPORTED",
    "FlowerProject",
    "check_version",
    "installed_flower_project",
    "load_flower_project",
    "require_flower",
]
