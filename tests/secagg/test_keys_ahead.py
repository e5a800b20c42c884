"""Keys advertised ahead: a networked client's masked input brings its next round's keys, that
round's TRAIN brings the roster, and the sum is still exact. Each key serves one round only: a
roster that names a key already used, or one the client dropped, is refused in one line.

``SecureClient`` (a ``fedhive client``'s side) against ``SecAggServer`` (the node's), every
message through JSON as a receiver gets it; no broker (``test_amqp_rounds.py`` has one).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhive.core.bodies import TrainBody
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.params import Params
from fedhive.runtime.session_config import make_config
from fedhive.secagg import wire
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.messages import AdvertiseKeys, MaskedInput, UnmaskRequest
from fedhive.secagg.node_client import SecureClient
from fedhive.secagg.round import round_context
from fedhive.secagg.server import SecAggServer
from fedhive.secagg.settings import fixed_point

SESSION = "keys-ahead"
IDS = [f"c{i}" for i in range(6)]
BASE = Params({"w": np.zeros(4, np.float32)})


def trip(msg: Message) -> Message:
    """As a receiver gets it: the body through JSON."""
    body = json.loads(json.dumps(msg.envelope.body))
    return make(msg.kind, msg.envelope.sender, round=msg.envelope.round, body=body, payload=msg.payload)


class Clients:
    def __init__(self) -> None:
        config = make_config(session_id=SESSION, secure_aggregation=True, min_clients=len(IDS))
        self.sent: dict[str, list[Message]] = {c: [] for c in IDS}
        self.secure = {c: SecureClient(c, SESSION, config, 10, self._outbox(c)) for c in IDS}

    def _outbox(self, cid: str):  # type: ignore[no-untyped-def]
        async def send(msg: Message) -> None:
            self.sent[cid].append(trip(msg))

        return send

    def last(self, cid: str) -> Message:
        return self.sent[cid][-1]

    def keys_ahead(self, cid: str) -> AdvertiseKeys:
        """The keys ``cid``'s last masked input advertised for its next round."""
        masked = [m for m in self.sent[cid] if wire.stage_of(m) == "masked"][-1]
        keys = wire.read_next_keys(masked)
        assert keys is not None and keys.client == cid
        return keys


def train(rnd: int, body: TrainBody | None = None) -> Message:
    return trip(make(Kind.TRAIN, "coordinator", round=rnd, body=(body or TrainBody.model_construct()).to_body()))


def update(cid: str, rnd: int) -> Params:
    return Params({"w": np.full(4, (IDS.index(cid) + 1) * 0.01 * rnd, np.float32)})


async def a_round(clients: Clients, rnd: int, ahead: bool) -> np.ndarray:
    """One round; with ``ahead`` the server takes the keys the last masked inputs brought."""
    fp = fixed_point(4.0, 28)
    server = SecAggServer(round_context(SESSION, rnd, 0), fp.vector_length(BASE.spec), 0.5, neighbours=4)
    if ahead:
        for c in IDS:
            server.add_keys(clients.keys_ahead(c))
        roster = server.roster()
        for c in IDS:
            opening = wire.train_with_roster(TrainBody.model_construct(), 0, roster.for_client(c))
            await clients.secure[c].begin(rnd, 0, BASE, train(rnd, opening))
    else:
        for c in IDS:
            await clients.secure[c].begin(rnd, 0, BASE, train(rnd))
            server.add_keys(wire.read_keys(clients.last(c)))
        roster = server.roster()
        for c in IDS:
            body = wire.roster_body(0, roster.for_client(c))
            await clients.secure[c].on_step(trip(make(Kind.TRAIN, "coordinator", round=rnd, body=body)))
    for c in IDS:
        server.add_shares(wire.read_shares(clients.last(c)))
    routed = server.routed()
    for c in IDS:
        body = wire.routed_body(0, routed[c])
        await clients.secure[c].on_step(trip(make(Kind.TRAIN, "coordinator", round=rnd, body=body)))
        await clients.secure[c].trained(rnd, 0, update(c, rnd), 10)
        masked = clients.last(c)
        assert wire.stage_of(masked) == "masked"
        assert isinstance(masked.payload, Params)
        server.add_masked(MaskedInput(c, masked.payload[wire.MASKED].view(np.uint64)))
    request = server.unmask_request()
    for c in IDS:
        part = UnmaskRequest(request.survivors & (roster.graph[c] | {c}), request.dropped & roster.graph[c])
        body = wire.unmask_request_body(0, part)
        await clients.secure[c].on_step(trip(make(Kind.TRAIN, "coordinator", round=rnd, body=body)))
        server.add_unmask(wire.read_unmask_shares(clients.last(c)))
    sums, weight, _examples = fp.decode(server.result(), BASE)
    mean: np.ndarray = np.asarray(sums["w"], np.float64) / weight
    return mean


async def test_keys_ahead_make_a_round_three_exchanges_and_keep_the_sum_exact() -> None:
    clients = Clients()
    first = await a_round(clients, 1, ahead=False)
    sent_in_round_1 = {c: [wire.stage_of(m) for m in clients.sent[c]] for c in IDS}
    second = await a_round(clients, 2, ahead=True)
    for c in IDS:
        assert sent_in_round_1[c] == ["keys", "shares", "masked", "unmask"]
        assert [wire.stage_of(m) for m in clients.sent[c][4:]] == ["shares", "masked", "unmask"]
    mean = np.mean([(IDS.index(c) + 1) * 0.01 for c in IDS])
    assert np.max(np.abs(first - mean)) <= 2**-29 and np.max(np.abs(second - 2 * mean)) <= 2**-29


async def test_a_key_advertised_ahead_serves_one_round_only() -> None:
    clients = Clients()
    await a_round(clients, 1, ahead=False)
    fp = fixed_point(4.0, 28)
    server = SecAggServer(round_context(SESSION, 2, 0), fp.vector_length(BASE.spec), 0.5, neighbours=4)
    for c in IDS:
        server.add_keys(clients.keys_ahead(c))
    roster = server.roster()
    with_roster = train(2, wire.train_with_roster(TrainBody.model_construct(), 0, roster.for_client("c0")))
    await clients.secure["c0"].begin(2, 0, BASE, with_roster)
    assert wire.stage_of(clients.last("c0")) == "shares"
    # The same roster again (a node replaying it, or a retry that reuses the keys): refused.
    with pytest.raises(SecAggError, match="names keys we did not advertise ahead"):
        await clients.secure["c0"].begin(2, 0, BASE, with_roster)
    # A TRAIN without a roster makes c1 forget its key ahead: a roster naming it later is refused.
    await clients.secure["c1"].begin(2, 0, BASE, train(2))
    assert wire.stage_of(clients.last("c1")) == "keys"
    late = train(2, wire.train_with_roster(TrainBody.model_construct(), 0, roster.for_client("c1")))
    with pytest.raises(SecAggError, match="names keys we did not advertise ahead"):
        await clients.secure["c1"].begin(2, 0, BASE, late)


async def test_a_round_replayed_after_its_masked_input_is_refused() -> None:
    # After its masked input a client has keys ahead again, so a node that sends the same round's
    # TRAIN once more meets no "not advertised ahead": what stops it is that the round's context
    # is spent (a second run would mask with the same pair seeds and a new self mask).
    clients = Clients()
    await a_round(clients, 1, ahead=False)
    await a_round(clients, 2, ahead=True)
    fp = fixed_point(4.0, 28)
    server = SecAggServer(round_context(SESSION, 2, 0), fp.vector_length(BASE.spec), 0.5, neighbours=4)
    for c in IDS:
        server.add_keys(clients.keys_ahead(c))
    roster = server.roster()
    replayed = train(2, wire.train_with_roster(TrainBody.model_construct(), 0, roster.for_client("c0")))
    sent = len(clients.sent["c0"])
    with pytest.raises(SecAggError, match="asked a second time to mask under"):
        await clients.secure["c0"].begin(2, 0, BASE, replayed)
    assert len(clients.sent["c0"]) == sent  # no shares, no escrow went out
    # The session goes on: the next round's context is new.
    mean = np.mean([(IDS.index(c) + 1) * 0.01 for c in IDS])
    assert np.max(np.abs(await a_round(clients, 3, ahead=False) - 3 * mean)) <= 1e-7  # float32 updates
