"""How many worker processes a simulation starts, and which GPU each one sees.

- By default one worker per core, or, for an app that uses torch on a machine with GPUs, one per
  GPU: a GPU is best fed by one process that trains its clients one after another, and several
  processes on one GPU would each hold their own CUDA context and copy of the model.
- ``--workers N`` overrides the count; with GPUs, worker ``k`` sees GPU ``k mod G`` (several
  workers share a GPU only when asked for more workers than GPUs).
- A worker sees its GPU as its only one (``CUDA_VISIBLE_DEVICES``), so the app's own
  ``fedhive.torch.pick_device()`` (``"auto"``: cuda if available) picks it without knowing it
  is one of several. A site setting that pins a device (``--node device=cpu`` or ``cuda:1``) is
  the app's to follow: GPUs are then not shared out.
- Never more workers than clients: a worker without a client would only cost its start.

Every trainer, in a worker or in the simulation's own process, runs one BLAS/OpenMP thread and
one torch thread (``OMP_NUM_THREADS`` if the user's environment sets it): the workers together use
every core, and a client's update does not depend on where it trained (OpenBLAS's results change
in the last bits with its number of threads).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedhive.errors import ConfigError

THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def cores() -> int:
    """The cores this process may run on (a container's or ``taskset``'s share, not the machine's)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def visible_gpus(device_setting: object = None) -> list[str]:
    """The GPUs to share out among workers, as ``cuda:ID`` (``ID`` as ``CUDA_VISIBLE_DEVICES``
    names it) or ``mps``: none unless the app imported torch (which the simulation's process has
    done by loading it) and leaves the device to ``pick_device("auto")``."""
    if device_setting not in (None, "auto"):
        return []
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    count = int(torch.cuda.device_count())
    if count:
        listed = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = _listed_ids(listed) if listed is not None else [str(i) for i in range(count)]
        return [f"cuda:{i}" for i in ids[:count]]
    mps = getattr(torch.backends, "mps", None)
    return ["mps"] if mps is not None and mps.is_available() else []


def _listed_ids(text: str) -> list[str]:
    ids = []
    for part in (p.strip() for p in text.split(",")):
        if not part or part.startswith("-"):  # CUDA stops at the first id that is not valid
            break
        ids.append(part)
    return ids


def worker_devices(requested: int | None, *, cores: int, gpus: Sequence[str], clients: int) -> list[str | None]:
    """One entry per worker process: the GPU it sees, or None (as this process sees them)."""
    if requested is not None and requested < 1:
        raise ConfigError(f"--workers must be at least 1, got {requested}")
    count = requested if requested is not None else (len(gpus) or cores)
    count = max(1, min(count, clients))
    if not gpus:
        return [None] * count
    return [gpus[k % len(gpus)] for k in range(count)]


def trainer_threads(environ: Mapping[str, str] = os.environ) -> int:
    """Math threads per trainer: ``OMP_NUM_THREADS`` if set, else 1."""
    try:
        return max(1, int(environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        raise ConfigError(f"OMP_NUM_THREADS must be a whole number, got {environ['OMP_NUM_THREADS']!r}") from None


def one_thread_per_trainer() -> None:
    """This process trains clients as its workers do, with ``trainer_threads()`` math threads:
    libraries loaded from now on (torch, with the app) read the environment; numpy's BLAS, loaded
    already, is told; torch too if it is loaded."""
    threads = trainer_threads()
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    from threadpoolctl import threadpool_limits  # scikit-learn's, which fedhive depends on

    threadpool_limits(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def worker_env(device: str | None, base: Mapping[str, str]) -> dict[str, str]:
    """A worker's environment: ``base`` with ``trainer_threads()`` threads per math library, the
    worker's GPU, and fedhive itself importable whatever the working directory."""
    env = dict(base)
    threads = str(trainer_threads(base))
    for var in THREAD_VARS:
        env[var] = threads
    if device is not None and device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.removeprefix("cuda:")
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([package_root, *(p for p in paths if p != package_root)])
    return env
