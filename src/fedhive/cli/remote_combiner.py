"""``fedhive combiner --agent``: a remote combiner for ``fedhive serve``, session after session.

Its id and secret come from ``fedhive admin site create NAME --role combiner``; it reads no client
store (the server gives it a key per site it is assigned, ``runtime.combiner_orders``). It runs
until SIGTERM or SIGINT, idle between sessions; exit code 0 then.
"""

from __future__ import annotations

import asyncio
import signal

from fedhive.cli.event_loop import run_main
from fedhive.cli.mlflow_cli import combiner_run, node_run_line
from fedhive.runtime.combiner_agent import CombinerAgent, remote_combiner_codec
from fedhive.runtime.networked import BrokerSettings
from fedhive.tracking.mlflow_options import MlflowOptions
from fedhive.transports.amqp_topology import Role
from fedhive.transports.base import Transport


def serve_sessions(
    combiner_id: str,
    key: bytes,
    broker: BrokerSettings,
    *,
    heartbeat_interval_s: float,
    exact_partials: bool,
    ml: MlflowOptions,
) -> None:
    tracked = combiner_run(ml, combiner_id)  # an unreachable tracking server fails here, before connecting

    def connect(links: dict[str, bytes]) -> Transport:
        # Its queue stays while it reconnects: the server and its sites address it by its id. As a
        # combiner it declares nothing with a broker user of its own (the server declares and binds
        # its queue, and opens the way down to each site it assigns it: docs/security.md).
        codec = remote_combiner_codec(key, links, broker.artifacts)
        return broker.transport(combiner_id, codec, role=Role.COMBINER)

    agent = CombinerAgent(
        combiner_id,
        key,
        connect,
        heartbeat_interval_s=heartbeat_interval_s,
        exact_partials=exact_partials,
        observers=[tracked.attach] if tracked is not None else [],
    )

    def ready() -> None:
        print(f"combiner {combiner_id} connected; waiting for sessions from the server", flush=True)

    async def run() -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stop)
        return await agent.run(on_ready=ready)

    try:
        served = run_main(run())
    except BaseException as exc:
        if tracked is not None:  # the run ends FAILED, with the reason
            tracked.end(" ".join(str(exc).split()) or type(exc).__name__)
        raise
    if tracked is not None:
        tracked.end()
        print(node_run_line(tracked, ml), flush=True)
    print(f"combiner {combiner_id} stopped after {served} sessions", flush=True)
