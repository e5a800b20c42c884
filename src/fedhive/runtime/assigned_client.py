"""A client of a hierarchical federation: asks the coordinator for a combiner, then serves it.

Clients connect outbound only, so the coordinator cannot move them: instead a client that stops
hearing its combiner for the heartbeat timeout the combiner announced when it registered the
client (``combiner_timeout_s`` if it announced none) asks the coordinator again, naming the silent
combiner in ``avoid``, and registers with the one it is given: moved within two heartbeat
timeouts. Every wait is bounded: each request for an assignment (``assign_timeout_s``), and the
number of moves (``max_moves``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fedhive.core.bodies import RegisterBody, RegisteredBody, parse_body
from fedhive.core.envelope import Kind, make
from fedhive.errors import SessionFailed, TransportError
from fedhive.runtime.client import ClientNode, TrainerFactory
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.transports.base import Transport

log = logging.getLogger("fedhive.client")


async def request_assignment(
    transport: Transport,
    node_id: str,
    *,
    coordinator_id: str = COORDINATOR_ID,
    avoid: str | None = None,
    timeout_s: float = 60.0,
    retry_s: float = 1.0,
) -> str | None:
    """The combiner the coordinator assigns us, or None if it does not answer within ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    request = (
        RegisterBody.model_construct(role="client", avoid=avoid)
        if avoid
        else RegisterBody.model_construct(role="client")
    )
    body = request.to_body()
    while (left := deadline - loop.time()) > 0:
        try:
            await transport.send(coordinator_id, make(Kind.REGISTER, node_id, body=body))
        except TransportError as exc:
            log.debug("%s: cannot reach the coordinator yet (%s)", node_id, exc)
        try:
            async with asyncio.timeout(min(retry_s, left)):
                while True:
                    msg = await transport.recv()
                    if msg.sender == coordinator_id and msg.kind is Kind.REGISTERED:
                        combiner = parse_body(RegisteredBody, msg).combiner
                        if combiner is not None:
                            return combiner
        except TimeoutError:
            continue
    return None


async def run_assigned_client(
    node_id: str,
    transport: Transport,
    trainer_for: TrainerFactory,
    *,
    num_examples: int,
    coordinator_id: str = COORDINATOR_ID,
    assign_timeout_s: float = 60.0,
    reassign_timeout_s: float = 15.0,
    combiner_timeout_s: float = 20.0,
    max_moves: int = 10,
    **client_kwargs: Any,
) -> ClientNode:
    """Serve assigned combiners until the session ends; returns the last ``ClientNode`` (for its
    ``rounds_trained``). Raises ``SessionFailed`` when no combiner can be had."""
    avoid: str | None = None
    error: SessionFailed | None = None
    for move in range(max_moves + 1):
        timeout = assign_timeout_s if move == 0 else reassign_timeout_s
        combiner = await request_assignment(
            transport, node_id, coordinator_id=coordinator_id, avoid=avoid, timeout_s=timeout
        )
        if combiner is None:
            raise error or SessionFailed(f"{node_id}: the coordinator assigned no combiner within {timeout:.0f} s")
        log.info("%s: assigned to %s", node_id, combiner)
        client = ClientNode(
            node_id,
            transport,
            trainer_for,
            num_examples=num_examples,
            coordinator_id=combiner,
            coordinator_timeout_s=combiner_timeout_s,
            follow_announced_timeout=True,
            register_timeout_s=combiner_timeout_s,
            **client_kwargs,
        )
        try:
            await client.run()
            return client
        except SessionFailed as exc:
            # The combiner went silent, or the session ended badly; if the coordinator is still
            # there it gives us another combiner, and if not, the request times out and we end.
            log.warning("%s: lost %s (%s); asking for another combiner", node_id, combiner, exc)
            avoid, error = combiner, exc
    raise error or SessionFailed(f"{node_id}: moved {max_moves} times; giving up")
