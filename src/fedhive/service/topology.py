"""What a session's topology asks of its request, and what its config keeps of it.

A session started from ``POST /sessions/start`` runs as a star (a coordinator over the sites), as a
hierarchy (combiners the server starts, the sites behind them) or decentralised (the sites train
among themselves; the server watches). The topology and the number of combiners are kept in the
session's config (``data``), where its page and a restarted server find them; a hierarchy over
remote combiners keeps the ids of those it claimed (``remote_combiners``, added by the manager).
"""

from __future__ import annotations

from fedhive.errors import ConfigError
from fedhive.runtime.hub import DECENTRALISED, STAR, TOPOLOGIES
from fedhive.service.launcher import SessionRequest

MAX_COMBINERS = 64


def topology_data(request: SessionRequest, *, runs_nodes: bool) -> dict[str, object]:
    """The keys the session's ``config.data`` gets (none for a star); ``ConfigError`` naming the
    field when the request cannot run as asked. ``runs_nodes``: the server can run combiners and
    reach peers (``fedhive serve`` can; a manager built without ``ServiceNodes`` cannot)."""
    topology = request.topology
    if topology not in TOPOLOGIES:
        raise ConfigError(f"topology: {topology!r} is not one of {', '.join(TOPOLOGIES)}")
    if topology != "hierarchical" and (request.combiners or request.remote_combiners is not None):
        raise ConfigError("combiners: only a hierarchical session has combiners")
    if topology == STAR:
        return {}
    if not runs_nodes:
        raise ConfigError(f"topology: this server runs star sessions only, not {topology} ones")
    config = request.config
    if topology == DECENTRALISED:
        if request.min_peers < 2:
            raise ConfigError("min_peers: a decentralised session needs at least 2 peers")
        if request.initial_model is not None or request.initial_params is not None:
            raise ConfigError("initial_model: a decentralised session's peers make their seed model themselves")
        if config.secure_aggregation or config.aggregation == "async":
            raise ConfigError("topology: a decentralised session has no secure or asynchronous aggregation")
        return {"topology": topology}
    if config.aggregation == "async":
        raise ConfigError("topology: a hierarchical session has no asynchronous aggregation")
    if request.remote_combiners is not None:
        if request.combiners:
            raise ConfigError("combiners: give a number to start or remote combiners, not both")
        if len(request.remote_combiners) > MAX_COMBINERS:
            raise ConfigError(f"combiners: at most {MAX_COMBINERS} remote combiners")
        return {"topology": topology}
    if not 1 <= request.combiners <= MAX_COMBINERS:
        raise ConfigError(f"combiners: a hierarchical session needs 1 to {MAX_COMBINERS} combiners")
    if request.combiners > request.min_peers:
        raise ConfigError(f"combiners: {request.combiners} combiners need min_peers of at least {request.combiners}")
    return {"topology": topology, "combiners": request.combiners}
