"""Message bodies (core.bodies): every kind round-trips, a bad field is a one-line ProtocolError
naming the kind and the field, and unknown keys are ignored (old nodes keep reading new ones)."""

from __future__ import annotations

import json

import pytest

from fedhive.core.bodies import (
    BODIES,
    AnnounceBody,
    Body,
    EnableBody,
    ErrorBody,
    EvaluateBody,
    EvaluationBody,
    HeartbeatBody,
    Member,
    PartialBody,
    PeerUpdateBody,
    RegisterBody,
    RegisteredBody,
    StopBody,
    TrainBody,
    UpdateBody,
    attempt_claimed,
    failure_rows,
    member_rows,
    parse_body,
    seed_rows,
)
from fedhive.core.envelope import Kind, make
from fedhive.errors import ProtocolError

MEMBERS = [Member("c1", 10, {"loss": 0.5}), Member("c2", 20, {})]

SAMPLES: list[Body] = [
    RegisterBody.model_construct(num_examples=5, label_counts={"0": 3, "1": 2}),
    RegisterBody.model_construct(num_examples=5, host="host-1"),
    RegisterBody.model_construct(role="combiner", clients=3, num_examples=40),
    RegisterBody.model_construct(role="client", avoid="comb-1"),
    RegisteredBody.model_construct(heartbeat_interval_s=2.5),
    RegisteredBody.model_construct(combiner="comb-1"),
    HeartbeatBody.model_construct(status="TRAINING", epoch=1, epochs=3, loss=0.25, accuracy=0.5),
    HeartbeatBody.model_construct(status="ONLINE", clients=4),
    EnableBody.model_construct(config={"rounds": 3}, spec=[["w", [2, 2], "float32"]]),
    TrainBody.model_construct(fit={"epochs": 1}, app="demo", app_digest="ab" * 32, attempt=2),
    TrainBody.model_construct(fit={}, clients=seed_rows([("c1", 7), ("c2", 8)])),
    UpdateBody.model_construct(attempt=1, num_examples=12, metrics={"loss": 0.5}, compression="topk:0.1"),
    EvaluateBody.model_construct(app="demo", app_digest="cd" * 32, clients=["c1", "c2"]),
    EvaluationBody.model_construct(members=member_rows(MEMBERS), failures=failure_rows([("c3", "boom")])),
    PartialBody.model_construct(
        mode="sum",
        exact=True,
        attempt=0,
        total_weight=30.0,
        num_examples=30,
        count=2,
        metric_sums={"loss": 5.0},
        metric_weight=30.0,
        clients=["c1", "c2"],
        members=member_rows(MEMBERS),
    ),
    PartialBody.model_construct(mode="raw", attempt=0, updates=member_rows(MEMBERS), clients=["c1", "c2"]),
    PartialBody.model_construct(mode="none", attempt=1, members=[], failures=failure_rows([("c1", "x")])),
    StopBody.model_construct(),
    StopBody.model_construct(reason="cancelled"),
    ErrorBody.model_construct(reason="no data", attempt=3),
    AnnounceBody.model_construct(type="hello", have=-1),
    AnnounceBody.model_construct(type="commit", ids=["a", "b"], base="ef" * 32),
    PeerUpdateBody.model_construct(type="update", num_examples=3, metrics={"accuracy": 1.0}),
    PeerUpdateBody.model_construct(type="model", digest="01" * 32, order=["b", "a"]),
]


def test_every_kind_has_a_body_model() -> None:
    assert set(BODIES) == set(Kind)


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: f"{type(b).__name__}")
def test_round_trip_through_json(body: Body) -> None:
    """What a sender builds is what a receiver reads, field for field, after the wire's JSON."""
    wire = json.loads(json.dumps(body.to_body()))
    msg = make(body.kind, "sender", body=wire)
    back = parse_body(type(body), msg)
    assert back.to_body() == body.to_body()
    assert back == type(body).model_validate(body.to_body())


def test_only_the_given_fields_go_on_the_wire() -> None:
    # The keys nodes have always sent: a default is not written, the receiver applies it.
    assert RegisterBody.model_construct(num_examples=5, host="h").to_body() == {"num_examples": 5, "host": "h"}
    assert ErrorBody.model_construct(reason="x").to_body() == {"reason": "x"}


def test_a_message_is_validated_once() -> None:
    msg = make(Kind.UPDATE, "a", body={"num_examples": 3})
    first = parse_body(UpdateBody, msg)
    assert parse_body(UpdateBody, msg) is first


NAN = float("nan")
MANY = {f"m{i}": 1.0 for i in range(65)}
TWICE = {"mode": "none", "members": [{"client": "a", "num_examples": 1}], "failures": [{"client": "a"}]}
NEGATIVE = {"mode": "sum", "total_weight": -1.0, "num_examples": 1, "count": 1, "metric_weight": 0.0}


@pytest.mark.parametrize(
    ("model", "body", "expected"),
    [
        (UpdateBody, {}, "update body: field 'num_examples' is required"),
        (UpdateBody, {"num_examples": 0}, "field 'num_examples': Input should be greater than or equal to 1"),
        (UpdateBody, {"num_examples": True}, "update body: field 'num_examples': Input should be a valid integer"),
        (UpdateBody, {"num_examples": 1, "metrics": {"loss": NAN}}, "field 'metrics.loss': Input should be a finite"),
        (UpdateBody, {"num_examples": 1, "metrics": {"x" * 65: 1.0}}, "field 'metrics.xxxx"),
        (UpdateBody, {"num_examples": 1, "metrics": MANY}, "field 'metrics': Dictionary should have at most 64 items"),
        (UpdateBody, {"num_examples": 1, "attempt": -1}, "field 'attempt'"),
        (RegisterBody, {}, "register body: field 'num_examples' is required"),
        (RegisterBody, {"num_examples": 1, "host": ""}, "register body: field 'host'"),
        (RegisterBody, {"role": "combiner", "num_examples": 1}, "field 'clients' is required of a combiner"),
        (PartialBody, {"mode": "sum"}, "partial body: field 'total_weight' is required in mode 'sum'"),
        (PartialBody, {"mode": "raw"}, "partial body: field 'updates' must list 1 or more updates"),
        (PartialBody, {"mode": "median"}, "partial body: field 'mode'"),
        (PartialBody, {"mode": "none", "members": [{"client": "a", "num_examples": 0}]}, "'members.0.num_examples'"),
        (PartialBody, TWICE, "partial body: a client is named twice"),
        (PartialBody, NEGATIVE, "field 'total_weight': Input should be greater than 0"),
        (TrainBody, {"clients": [{"client": "a", "seed": -1}]}, "train body: field 'clients.0.seed'"),
        (AnnounceBody, {"type": "beat"}, "announce body: field 'have' is required in a 'beat'"),
        (PeerUpdateBody, {"type": "gossip"}, "peer_update body: field 'num_examples' is required in a 'gossip'"),
        (EnableBody, {"config": {}}, "enable body: field 'spec' is required"),
    ],
)  # fmt: skip
def test_a_bad_field_is_a_one_line_error_naming_it(model: type[Body], body: dict[str, object], expected: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_body(model, make(model.kind, "x", body=body))
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_keys_are_ignored() -> None:
    """Extend, never rename: a newer node's extra keys do not stop an older one from reading."""
    msg = make(Kind.UPDATE, "a", body={"num_examples": 3, "from_the_future": {"x": 1}})
    body = parse_body(UpdateBody, msg)
    assert body.num_examples == 3
    assert "from_the_future" not in body.to_body()


def test_informative_heartbeat_figures_are_dropped_not_the_beat() -> None:
    msg = make(Kind.HEARTBEAT, "a", body={"status": "TRAINING", "epoch": "3", "loss": True, "accuracy": 0.5})
    beat = parse_body(HeartbeatBody, msg)
    assert (beat.status, beat.epoch, beat.loss, beat.accuracy) == ("TRAINING", None, None, 0.5)


def test_reasons_are_cut_not_refused() -> None:
    body = parse_body(ErrorBody, make(Kind.ERROR, "a", body={"reason": "x" * 2000}))
    assert body.reason == "x" * 500


def test_members_and_failures_read_back() -> None:
    body = EvaluationBody.model_construct(members=member_rows(MEMBERS), failures=failure_rows([("c3", "boom")]))
    read = parse_body(EvaluationBody, make(Kind.EVALUATION, "h", body=body.to_body()))
    assert read.member_list() == MEMBERS
    assert read.failure_list() == [("c3", "boom")]


def test_peer_ids_keep_order_and_drop_malformed_entries() -> None:
    msg = make(Kind.ANNOUNCE, "a", body={"type": "commit", "ids": ["b", 3, "", "a"], "base": "d"})
    assert parse_body(AnnounceBody, msg).ids == ["b", "a"]


def test_attempt_claimed_reads_a_body_that_fails_validation() -> None:
    assert attempt_claimed(make(Kind.TRAIN, "c", body={"attempt": 2, "clients": "junk"})) == 2
    assert attempt_claimed(make(Kind.TRAIN, "c", body={"attempt": "2"})) == 0
