"""Secure aggregation's steps on the wire: each survives the trip, a malformed one is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedhive.core.bodies import TrainBody
from fedhive.core.envelope import Kind, Message, make
from fedhive.errors import ProtocolError
from fedhive.secagg import wire
from fedhive.secagg.client import SecAggClient
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.messages import UnmaskRequest
from fedhive.secagg.server import SecAggServer

CONTEXT = b"wire-test"
IDS = [f"c{i}" for i in range(8)]


def trip(kind: Kind, sender: str, body: dict[str, object]) -> Message:
    """As a receiver gets it: the body through JSON."""
    return make(kind, sender, body=json.loads(json.dumps(body)))


def test_a_round_of_steps_survives_the_wire() -> None:
    clients = {c: SecAggClient(c, CONTEXT) for c in IDS}
    server = SecAggServer(CONTEXT, 5, 0.5, neighbours=4)
    for c in clients.values():
        server.add_keys(wire.read_keys(trip(Kind.UPDATE, c.client_id, wire.keys_body(0, c.advertise()))))
    roster = server.roster()
    for cid, c in clients.items():
        part = wire.read_roster(trip(Kind.TRAIN, "coordinator", wire.roster_body(0, roster.for_client(cid))))
        assert part.ids == roster.ids and part.graph == roster.graph and len(part.keys) == 5  # itself and 4
        server.add_shares(wire.read_shares(trip(Kind.UPDATE, cid, wire.shares_body(0, c.share_keys(part)))))
    routed = server.routed()
    vectors = {c: np.arange(5, dtype=np.uint64) * (i + 1) for i, c in enumerate(IDS)}
    for cid, c in clients.items():
        mine = wire.read_routed(trip(Kind.TRAIN, "coordinator", wire.routed_body(0, routed[cid])))
        masked = c.masked_input(mine, vectors[cid])
        assert not np.array_equal(masked.vector, vectors[cid])
        server.add_masked(type(masked)(cid, wire.masked_payload(masked.vector)[wire.MASKED].view(np.uint64)))
    request = server.unmask_request()
    for cid, c in list(clients.items())[:-1]:  # the last one vanished after its masked input
        asked = wire.read_unmask_request(trip(Kind.TRAIN, "coordinator", wire.unmask_request_body(0, request)))
        answer = c.unmask(UnmaskRequest(asked.survivors, asked.dropped))
        server.add_unmask(wire.read_unmask_shares(trip(Kind.UPDATE, cid, wire.unmask_shares_body(0, answer))))
    assert server.recoverable()
    assert np.array_equal(server.result(), sum(vectors.values()))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"secagg": "keys", "c": "not base64!", "s": "AAAA"}, "a public key is not base64"),
        ({"secagg": "keys", "c": "AAAA", "s": "AAAA"}, "a public key has 3 bytes, not 32"),
        ({"secagg": "keys", "c": "AAAA"}, "field 's' is required"),
    ],
)
def test_a_malformed_step_is_one_line(body: dict[str, object], problem: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        wire.read_keys(trip(Kind.UPDATE, "c1", body))
    assert problem in str(caught.value).lower() and "\n" not in str(caught.value)


def test_a_roster_without_a_neighbours_keys_is_refused() -> None:
    clients = {c: SecAggClient(c, CONTEXT) for c in IDS}
    server = SecAggServer(CONTEXT, 5, 0.5, neighbours=4)
    for c in clients.values():
        server.add_keys(c.advertise())
    roster = server.roster()
    part = roster.for_client("c0")
    fresh = SecAggClient("c0", CONTEXT).advertise()
    swapped = type(part)({**part.keys, "c0": (fresh.c_public, fresh.s_public)}, part.threshold, 4, part.graph_seed,
                         members=part.members)  # fmt: skip
    with pytest.raises(SecAggError, match="does not hold the keys we advertised"):
        clients["c0"].share_keys(swapped)  # a server handing out keys in our name
    short = type(part)({"c1": roster.keys["c1"]}, part.threshold, 4, part.graph_seed, members=part.members)
    with pytest.raises(SecAggError, match="lacks the keys of our neighbours"):
        clients["c1"].share_keys(short)


def test_keys_advertised_ahead_ride_the_masked_input_and_the_roster_rides_the_train() -> None:
    server = SecAggServer(CONTEXT, 5, 0.5, neighbours=4)
    ahead = {c: SecAggClient(c, CONTEXT) for c in IDS}  # next round's keys, made at masked time
    for cid, c in ahead.items():
        masked = trip(Kind.UPDATE, cid, wire.masked_body(0, 7, c.advertise()))
        keys = wire.read_next_keys(masked)
        assert keys is not None and keys.client == cid
        server.add_keys(keys)
    roster = server.roster()
    train = TrainBody.model_construct(fit={"epochs": 1}, app="builtin")
    body = wire.train_with_roster(train, 2, roster.for_client("c3")).model_copy(update={"attempt": 2}).to_body()
    msg = trip(Kind.TRAIN, "coordinator", body)
    assert wire.stage_of(msg) is None  # an ordinary TRAIN to the client: the model, then training
    assert msg.envelope.body["fit"] == {"epochs": 1}
    part = wire.roster_in_train(msg)
    assert part is not None and part.ids == roster.ids and part.graph == roster.graph and len(part.keys) == 5
    assert wire.roster_in_train(trip(Kind.TRAIN, "coordinator", train.to_body())) is None
    assert wire.read_next_keys(trip(Kind.UPDATE, "c1", wire.masked_body(0, 7))) is None


def test_a_roster_in_a_train_for_another_attempt_or_a_bad_next_key_is_one_line() -> None:
    server = SecAggServer(CONTEXT, 5, 0.5, neighbours=4)
    for c in IDS:
        server.add_keys(SecAggClient(c, CONTEXT).advertise())
    body = wire.train_with_roster(TrainBody.model_construct(), 1, server.roster().for_client("c0")).to_body()
    with pytest.raises(ProtocolError, match="roster is for another attempt") as caught:
        wire.roster_in_train(trip(Kind.TRAIN, "coordinator", {**body, "attempt": 2}))
    assert "\n" not in str(caught.value)
    bad = {"secagg": "masked", "num_examples": 3, "next_keys": ["AAAA", "AAAA"]}
    with pytest.raises(ProtocolError, match="a public key has 3 bytes, not 32"):
        wire.read_next_keys(trip(Kind.UPDATE, "c1", bad))
