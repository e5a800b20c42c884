"""Model parameters: an ordered mapping of tensor name -> numpy array, and its spec.

``Params`` is what every layer passes around (trainers produce it, strategies aggregate it, codecs
serialise it). It never copies arrays on its own: callers decide when a copy is needed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedhive.core import residency
from fedhive.errors import NonFiniteError, PayloadError


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """Names, shapes and dtypes of a model's tensors, in order."""

    tensors: tuple[TensorSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_json(self) -> list[dict[str, object]]:
        return [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype} for t in self.tensors]

    @classmethod
    def from_json(cls, items: list[dict[str, object]]) -> ParamSpec:
        return cls(
            tuple(
                TensorSpec(str(i["name"]), tuple(int(d) for d in i["shape"]), str(i["dtype"]))  # type: ignore[attr-defined]
                for i in items
            )
        )


class Params(Mapping[str, np.ndarray]):
    """Ordered name -> array mapping. Arrays are held by reference, never copied implicitly."""

    __slots__ = ("_arrays",)

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None) -> None:
        self._arrays: dict[str, np.ndarray] = dict(arrays or {})

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    # The dict's own methods, not the Mapping mixins (which go through __getitem__ per key): these
    # run for every message a node checks and every update it folds.
    def __contains__(self, name: object) -> bool:
        return name in self._arrays

    def keys(self) -> KeysView[str]:
        return self._arrays.keys()

    def values(self) -> ValuesView[np.ndarray]:
        return self._arrays.values()

    def items(self) -> ItemsView[str, np.ndarray]:
        return self._arrays.items()

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {a.dtype}{list(a.shape)}" for n, a in self._arrays.items())
        return f"Params({inner})"

    @property
    def spec(self) -> ParamSpec:
        return ParamSpec(tuple(TensorSpec(n, tuple(a.shape), a.dtype.name) for n, a in self._arrays.items()))

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    @property
    def size(self) -> int:
        """Number of scalar parameters."""
        return sum(a.size for a in self._arrays.values())

    def copy(self) -> Params:
        return Params({n: a.copy() for n, a in self._arrays.items()})

    def flat_norm(self) -> float:
        """L2 norm over all tensors, accumulated in float64."""
        return math.sqrt(sum(float(np.square(a, dtype=np.float64).sum()) for a in self._arrays.values()))


def check_against_spec(
    params: Mapping[str, np.ndarray], expected: ParamSpec, *, what: str = "update", finite: bool = True
) -> None:
    """Raise ``PayloadError`` unless ``params`` has exactly the expected names, shapes and dtypes
    and (with ``finite``) only finite values: one pass over the data. Code that receives params
    from a node that already checked them (a trainer, fed by its client node) passes
    ``finite=False`` and checks the structure only."""
    # The common case in one pass over a cached (name, shape, dtype) list: this runs for every
    # update a host or a coordinator receives. Anything amiss takes the path below, which names it.
    arrays = params._arrays if type(params) is Params else params
    plan = _plan_of(expected)
    if len(arrays) == len(plan):
        for name, shape, dtype in plan:
            arr = arrays.get(name)
            if arr is None or arr.shape != shape or arr.dtype != dtype:
                break
        else:
            if finite:
                check_finite(params, what=what)
            return
    if len(params) != len(expected.tensors) or any(t.name not in params for t in expected.tensors):
        names = set(expected.names)
        missing = [n for n in expected.names if n not in params]
        extra = [n for n in params if n not in names]
        raise PayloadError(f"{what} tensor names differ: missing {missing}, unexpected {extra}")
    for t in expected.tensors:
        arr = params[t.name]
        if arr.shape != t.shape:
            raise PayloadError(f"{what} tensor {t.name!r} has shape {tuple(arr.shape)}, expected {t.shape}")
        if arr.dtype != _dtype(t.dtype):  # comparing dtype objects: ``dtype.name`` is slow to compute
            raise PayloadError(f"{what} tensor {t.name!r} has dtype {arr.dtype.name}, expected {t.dtype}")
    if finite:
        check_finite(params, what=what)


@functools.cache
def _dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


SpecPlan = tuple[tuple[str, tuple[int, ...], np.dtype[Any]], ...]
_last_plan: tuple[ParamSpec, SpecPlan] | None = None  # (a session's spec, its plan): by identity


def _plan_of(spec: ParamSpec) -> SpecPlan:
    """(name, shape, dtype object) per tensor of ``spec``, kept for the last spec asked for (by
    identity): a node checks every update of a session against the same spec object."""
    global _last_plan
    last = _last_plan
    if last is not None and last[0] is spec:
        return last[1]
    plan = tuple((t.name, t.shape, _dtype(t.dtype)) for t in spec.tensors)
    _last_plan = (spec, plan)
    return plan


def check_finite(params: Mapping[str, np.ndarray], *, what: str = "update") -> None:
    for name, arr in params.items():
        # A sum propagates NaN/Inf and is several times faster than isfinite().all(); only a sum
        # that overflows on finite values is a false alarm, and then we look element by element.
        kind = arr.dtype.kind
        if kind not in "fc":
            continue
        total = _sum(arr)
        # math.isfinite on a real scalar costs a tenth of np.isfinite: it counts with small models.
        finite = math.isfinite(total) if kind == "f" else bool(np.isfinite(total))
        if not finite and not np.isfinite(arr).all():
            raise NonFiniteError(f"{what} tensor {name!r} holds NaN or infinite values")


_SUM_CHUNK = 1 << 20  # elements


def _sum(arr: np.ndarray) -> Any:
    if arr.nbytes < residency.RELEASE_MIN_BYTES:
        return arr.sum()
    # Chunk by chunk: a memory-mapped tensor (a claim-checked update) gives each chunk's pages back
    # behind us, so the check does not make the whole tensor resident (see ``residency``).
    return sum((part.sum() for part in residency.read_once(arr.reshape(-1), _SUM_CHUNK)), arr.dtype.type(0))
