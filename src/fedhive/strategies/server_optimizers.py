"""Server optimisers: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Clients are averaged exactly as in FedAvg (the streaming, mergeable weighted mean); the server then
treats ``delta = mean - global`` as a pseudo-gradient and takes one optimiser step with it
(Hsu et al. 2019 for momentum; Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2,
for the adaptive ones, without bias correction and with ``v`` starting at ``tau**2`` as there).

Overflow: the pseudo-gradient is formed in float64, and the momentum buffer and the adaptive
optimisers' ``v`` are updated in float64 and saturated into their slots (an Inf there would
stay); a step whose exact value a float32 model cannot hold gives Inf, which the runtime's check
of every new global model refuses (``runtime.model_check``).

The optimiser state is per tensor, in the tensor's float precision (float32 for a float32 model:
the same memory as the model per slot), and round-trips through ``state``/``load_state`` as
``<slot>/<tensor>`` arrays plus ``step``, so a resumed session continues bit for bit. Non-float
tensors (counters) are not optimised: the new model takes their mean as FedAvg would.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fedhive.core.params import Params
from fedhive.errors import ConfigError
from fedhive.strategies.base import AggregateResult, Aggregator, Strategy
from fedhive.strategies.fedavg import WeightedMeanAggregator


def float64_template(params: Params) -> Params:
    """Shapes of ``params`` with float tensors as float64, without allocating: the mean comes
    back in full precision, so small pseudo-gradients are not lost to float32 rounding."""
    return Params(
        {
            n: np.broadcast_to(np.zeros((), np.float64 if a.dtype.kind == "f" else a.dtype), a.shape)
            for n, a in params.items()
        }
    )


class ServerOptimizer(Strategy):
    """Shared machinery: pseudo-gradient, per-tensor state slots, checkpointed state."""

    slots: tuple[str, ...] = ()

    def __init__(self, *, lr: float, weighted: bool = True) -> None:
        self.lr = lr
        self.weighted = weighted
        self._state: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        self._step = 0

    def aggregator(self, global_params: Params) -> Aggregator:
        return WeightedMeanAggregator(float64_template(global_params), weighted=self.weighted)

    def apply(self, global_params: Params, aggregate: AggregateResult, round: int) -> Params:
        out: dict[str, np.ndarray] = {}
        for name, g in global_params.items():
            mean = aggregate.params[name]
            if g.dtype.kind != "f":
                out[name] = mean.astype(g.dtype, copy=False)
                continue
            work = np.result_type(g.dtype, np.float32)
            delta = np.subtract(mean, g, dtype=np.float64).astype(work)
            step = self._direction(name, delta)
            new = g.astype(work)  # a copy: the caller's global model is never written
            new += work.type(self.lr) * step
            out[name] = new.astype(g.dtype, copy=False)
        self._step += 1
        return Params(out)

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        """Update the slots of tensor ``name`` with ``delta`` and return the step (before lr)."""
        raise NotImplementedError

    def _slot(self, slot: str, name: str, like: np.ndarray, fill: float) -> np.ndarray:
        arr = self._state[slot].get(name)
        if arr is None:
            arr = self._state[slot][name] = np.full(like.shape, fill, like.dtype)
        elif arr.shape != like.shape:
            raise ConfigError(f"{self.name}: saved {slot}/{name} has shape {arr.shape}, the model has {like.shape}")
        return arr

    def state(self) -> dict[str, np.ndarray]:
        out = {f"{slot}/{n}": a.copy() for slot, arrays in self._state.items() for n, a in arrays.items()}
        out["step"] = np.array(self._step, np.int64)
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        loaded: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slots}
        step = 0
        for key, arr in state.items():
            slot, sep, name = key.partition("/")
            if key == "step":
                step = int(arr)
            elif sep and slot in loaded:
                loaded[slot][name] = np.array(arr, copy=True)
            else:
                raise ConfigError(f"{self.name}: unexpected state entry {key!r}; was it saved by another strategy?")
        self._state, self._step = loaded, step

    def config(self) -> dict[str, object]:
        return {"name": self.name, "lr": self.lr, "weighted": self.weighted}


class FedAvgM(ServerOptimizer):
    """Server momentum (Hsu et al. 2019): ``buf = momentum * buf + delta``; ``x += lr * buf``.
    ``lr=1, momentum=0`` is FedAvg."""

    name = "fedavgm"
    slots = ("momentum",)

    def __init__(self, *, lr: float = 1.0, momentum: float = 0.9, weighted: bool = True) -> None:
        super().__init__(lr=lr, weighted=weighted)
        self.momentum = momentum

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        buf = self._slot("momentum", name, delta, 0.0)
        # In float64, saturated into the slot (as Adam's v): an Inf in the buffer would stay.
        big = np.finfo(buf.dtype).max
        acc = buf.astype(np.float64)
        acc *= self.momentum
        acc += delta
        np.clip(acc, -big, big, out=acc)
        buf[...] = acc
        return buf

    def config(self) -> dict[str, object]:
        return {**super().config(), "momentum": self.momentum}


class _Adaptive(ServerOptimizer):
    """``m = b1*m + (1-b1)*delta``; ``v`` per subclass; ``x += lr * m / (sqrt(v) + tau)``."""

    slots = ("m", "v")

    def __init__(
        self, *, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3, weighted: bool = True
    ) -> None:
        super().__init__(lr=lr, weighted=weighted)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau

    def _direction(self, name: str, delta: np.ndarray) -> np.ndarray:
        t = delta.dtype.type
        m = self._slot("m", name, delta, 0.0)
        v = self._slot("v", name, delta, self.tau * self.tau)
        m *= t(self.beta1)
        m += t(1.0 - self.beta1) * delta
        # v in float64, then saturated into its slot: a float32 square of 3e38 is Inf, and an Inf
        # in v would freeze those coordinates for the rest of the session. A huge v means a tiny
        # step, which is what the saturated value still gives.
        sq = np.square(delta, dtype=np.float64)
        v64 = v.astype(np.float64)
        self._update_v(v64, sq)
        np.minimum(v64, np.finfo(v.dtype).max, out=v64)
        v[...] = v64
        denom = np.sqrt(v64, out=v64)
        denom += self.tau
        np.divide(m, denom, out=denom)
        return denom.astype(delta.dtype, copy=False)

    def _update_v(self, v: np.ndarray, sq: np.ndarray) -> None:
        raise NotImplementedError

    def config(self) -> dict[str, object]:
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "tau": self.tau}


class FedAdam(_Adaptive):
    """``v = b2*v + (1-b2)*delta**2``."""

    name = "fedadam"

    def _update_v(self, v: np.ndarray, sq: np.ndarray) -> None:
        v *= v.dtype.type(self.beta2)
        v += v.dtype.type(1.0 - self.beta2) * sq


class FedYogi(_Adaptive):
    """``v = v - (1-b2)*delta**2*sign(v - delta**2)``: v moves additively, never explodes."""

    name = "fedyogi"

    def _update_v(self, v: np.ndarray, sq: np.ndarray) -> None:
        v -= v.dtype.type(1.0 - self.beta2) * sq * np.sign(v - sq)


class FedAdagrad(_Adaptive):
    """``v = v + delta**2`` (``beta2`` is unused)."""

    name = "fedadagrad"

    def _update_v(self, v: np.ndarray, sq: np.ndarray) -> None:
        v += sq

    def config(self) -> dict[str, object]:
        cfg = super().config()
        del cfg["beta2"]
        return cfg
