"""One worker process of a parallel simulation: ``python -m fedhive.runtime.training_worker FD``.

It loads the session's app ONCE, by reference (``AppSource``: the loader and the reference the
simulation's own process used, never pickled code), then trains and evaluates whichever virtual
clients the simulation hands it, one at a time, until its socket closes:

- the round's global model is read from a shared buffer (``runtime.shared_params``), as read-only
  views: the parent wrote it once for all workers;
- a client's update is checked (names, shapes, dtypes, finiteness, the session's screen) exactly
  as a ``ClientHost`` checks it, then written into the update slot the task names; only its
  example count and metrics travel back in the frame;
- a client's ``ctx.state`` comes with its task and goes back with the answer (safetensors bytes,
  ``app.state_store``): any worker may train any client, and the state stays with the client.

Started by ``runtime.worker_pool`` with one BLAS/OpenMP thread (its environment) and one torch
thread: the workers together use every core, each one at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import numpy as np

from fedhive.app.learner import FitConfig, Trainer
from fedhive.app.loader import LoadedApp
from fedhive.app.state_store import decode_state, encode_state
from fedhive.core.params import Params, ParamSpec, check_against_spec
from fedhive.errors import FedhiveError
from fedhive.runtime.session_config import SessionConfig
from fedhive.runtime.shared_params import ParamLayout, map_fd
from fedhive.runtime.site_app import SiteApp
from fedhive.runtime.worker_frames import BlockingChannel, FrameError
from fedhive.runtime.worker_timeline import mark, set_who
from fedhive.strategies.screening import UpdateScreen

log = logging.getLogger("fedhive.worker")


def main(argv: list[str]) -> int:
    # Ctrl-C reaches the whole process group: the simulation's process stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = BlockingChannel(socket.socket(fileno=int(argv[0])))
    try:
        return serve(channel)
    except (OSError, FrameError):  # the simulation went away (it ended, or was killed): so do we
        return 0


def serve(channel: BlockingChannel) -> int:
    hello = channel.read()
    if hello is None:
        return 0
    config = hello[0]
    set_who(f"worker-{config.get('worker')}")
    mark("worker-hello")
    logging.basicConfig(
        level=int(config.get("log_level", logging.WARNING)),
        format=f"worker {config.get('worker')}: %(levelname)s %(name)s: %(message)s",
    )
    for entry in reversed(config.get("sys_path", [])):  # what the simulation could import, this can
        if entry not in sys.path:
            sys.path.insert(0, entry)
    try:
        loaded = load_app_by(str(config["loader"]), config.get("args", []))
    except Exception as exc:  # one line back to the simulation, which says it to the user
        channel.write({"error": _one_line(exc)})
        return 1
    mark("app-loaded")
    layout, fds = channel.read_with_fds(2)
    worker = Worker(loaded, config, layout, fds)
    channel.write({"ready": True, "digest": loaded.digest, "pid": os.getpid()})
    while (frame := channel.read()) is not None:
        header, blob = frame
        op = header.get("op")
        if op == "session":
            worker.enable(SessionConfig.model_validate_json(header["config"]))
        elif op in ("fit", "evaluate"):
            mark("task-begin", op=op, client=header.get("client"), round=header.get("round"))
            answer, state = worker.run(header, blob)
            mark("task-end", busy_s=answer.get("busy_s"))
            channel.write(answer, state)
        else:
            log.warning("ignored a frame with op %r", op)
    return 0


def load_app_by(loader: str, args: list[Any]) -> LoadedApp:
    """The app, by the loader and arguments the simulation's own process used (``AppSource``)."""
    module, _, name = loader.partition(":")
    loaded = getattr(importlib.import_module(module), name)(*args)
    if not isinstance(loaded, LoadedApp):
        raise TypeError(f"{loader} gave a {type(loaded).__name__}, not a LoadedApp")
    if "torch" in sys.modules:  # the app uses torch: its threads as BLAS has them (the environment)
        _torch_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return loaded


class Worker:
    """Trains and evaluates the clients it is handed, from the shared buffers it maps."""

    def __init__(self, loaded: LoadedApp, config: dict[str, Any], layout: dict[str, Any], fds: list[int]) -> None:
        self.loaded = loaded
        self.node: dict[str, Any] = dict(config.get("node", {}))
        self.clients = int(config["clients"])
        self.layout = ParamLayout.of(ParamSpec.from_json(layout["spec"]))
        self._model = map_fd(fds[0], self.layout.nbytes)
        self._slots = map_fd(fds[1], self.layout.nbytes * int(layout["slots"]))
        self._slot_views = [self.layout.views(self._slots, i) for i in range(int(layout["slots"]))]
        self._session: SessionConfig | None = None
        self._gen = -1
        self._views = Params()
        self._screen: UpdateScreen | None = None

    def enable(self, session: SessionConfig) -> None:
        self._session, self._gen = session, -1

    def run(self, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        """A fit or an evaluate task: (the answer's header, the client's state after it)."""
        session = self._session
        if session is None:
            return {"task": header["task"], "reason": "its worker got a task before the session's settings"}, b""
        cid = str(header["id"])
        index = int(header["client"])
        site = SiteApp(self.loaded, cid, {**self.node, "partition_id": index, "num_partitions": self.clients})
        site.ctx.state = decode_state(blob) if blob else {}
        answer: dict[str, Any] = {"task": header["task"]}
        began = time.process_time()  # CPU, not wall: a busy machine must not make the clients look slower
        try:
            trainer = site.trainer_for(session)  # as ``plan_simulation`` builds it in the simulation's process
            params, screen = self._global(session, int(header["gen"]))
            if header["op"] == "fit":
                answer |= self._fit(trainer, cid, params, screen, header)
            else:
                answer |= self._evaluate(trainer, cid, params)
        except FedhiveError as exc:
            answer["reason"] = str(exc)
        state = b""
        if site.ctx.state:
            try:
                state = encode_state(site.ctx.state)
            except FedhiveError as exc:  # a client process would fail to save it, with this line
                answer = {"task": header["task"], "reason": str(exc)}
        answer["state"] = bool(state)
        answer["busy_s"] = time.process_time() - began
        return answer, state

    def _fit(
        self, trainer: Trainer, cid: str, params: Params, screen: UpdateScreen, header: dict[str, Any]
    ) -> dict[str, Any]:
        """As ``HostedClients.train`` does for one client; the update goes to its slot."""
        fit = dataclasses.replace(FitConfig.from_json(header["fit"]), round=int(header["round"]))
        try:
            result = trainer.fit(params, fit)
            check_against_spec(
                result.params, self.layout.spec, what=f"update from {cid}", finite=not screen.checks_finite
            )
        except FedhiveError:
            raise
        except Exception as exc:  # a bug in the app: its traceback here, one line for the round
            log.warning("the trainer of %s raised", cid, exc_info=True)
            return {"reason": f"its trainer raised {type(exc).__name__}: {exc}"}
        refused = screen.refused(result.params)
        if refused is not None:
            return {"reason": f"update {refused}"}
        for name, target in self._slot_views[int(header["slot"])].items():
            np.copyto(target, result.params[name], casting="no")
        return {"num_examples": result.num_examples, "metrics": dict(result.metrics)}

    def _evaluate(self, trainer: Trainer, cid: str, params: Params) -> dict[str, Any]:
        """As ``HostedClients.evaluate`` does for one client."""
        try:
            result = trainer.evaluate(params)
        except FedhiveError:
            raise
        except Exception as exc:
            log.warning("the evaluation of %s raised", cid, exc_info=True)
            return {"reason": f"its evaluation raised {type(exc).__name__}: {exc}"}
        if result.num_examples < 1:
            return {"reason": "evaluated no examples"}
        return {"num_examples": result.num_examples, "metrics": dict(result.metrics)}

    def _global(self, session: SessionConfig, gen: int) -> tuple[Params, UpdateScreen]:
        """The round's global model: views of the shared buffer, made once per model the parent
        publishes, so that the app's read-only views of it are shared by its clients as in-process."""
        if gen != self._gen or self._screen is None:
            self._views = self.layout.views(self._model, writeable=False)
            self._screen = UpdateScreen(
                self._views, max_update_norm=session.max_update_norm, max_model_jump=session.max_model_jump
            )
            self._gen = gen
        return self._views, self._screen


def _torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    with contextlib.suppress(RuntimeError):  # the app already ran parallel work: its pool stays as it is
        torch.set_num_interop_threads(1)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    name = "" if isinstance(exc, FedhiveError) else f"{type(exc).__name__}: "
    return name + (text[0] if text else type(exc).__name__)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Not sys.exit: the interpreter's teardown (torch's, for one) costs a worker a good part of a
    # second after the simulation is over, and there is nothing left to save: logs and stdio are
    # flushed here, the shared buffers and the socket go with the process.
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
