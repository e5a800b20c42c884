"""Virtual clients behind client hosts over a real RabbitMQ (``fedhive client --virtual N --host ID``).

A host answers the coordinator for its clients on one AMQP connection: one TRAIN per round for all
of its selected clients, partial sums back, while each client registers and beats with its own
key. These tests check that a session over two hosts completes like the same simulation, that the
coordinator sees (and accepts an update from) every client, and that neither a virtual client
nor a host can speak for a client that is not its own.
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
from pathlib import Path

import pytest
from amqp_cluster import Cluster, Net, session_toml

from fedhive.app.loader import BUILTIN
from fedhive.cli.site_options import build_site
from fedhive.core import wire
from fedhive.core.envelope import Kind, Message, make
from fedhive.core.signing import Verifier, sign
from fedhive.errors import SessionFailed
from fedhive.learning.local_data import LocalData
from fedhive.runtime import events as ev
from fedhive.runtime.bus import EventBus
from fedhive.runtime.coordinator import COORDINATOR_ID
from fedhive.runtime.networked import ClientSettings, client_codec, run_client_host
from fedhive.transports.wire_codec import WireCodec
from session_results import latest_results

pytestmark = pytest.mark.amqp


@pytest.mark.slow
def test_two_host_processes_of_50_clients_serve_one_session(cluster: Cluster, tmp_path: Path) -> None:
    # The clients' identities, as 'fedhive clients add v --count 100 --out-file FILE' writes them;
    # each host's own identity comes with --secret.
    credentials = tmp_path / "clients.jsonl"
    lines = [json.dumps({"client_id": c, "secret": s}) for c, s in cluster.add_clients("v", 100)]
    credentials.write_text("\n".join(lines) + "\n")
    host_ids = [cluster.store.add("host-a"), cluster.store.add("host-b")]
    cluster.node_ids.update(h for h, _ in host_ids)
    settings = {"rounds": 3, "min_clients": 100, "fraction": 0.5, "heartbeat_interval_s": 1.0,
                "heartbeat_timeout_s": 10.0}  # fmt: skip
    config = session_toml(tmp_path / "session.toml", data={"dataset": "digits"}, **settings)
    reference = cluster.start(
        "simulate", "simulate", "--dataset", "digits", "--clients", "100", "--rounds", "3", "--fraction", "0.5",
        "--model", "logreg-np", "--lr", "0.1", "--seed", "0", "--out", str(tmp_path / "sim"), "--json",
    )  # fmt: skip
    coordinator = cluster.coordinator(config, tmp_path / "net")
    # Two processes, each the host of one half of the store's clients (sorted ids: v001..v050, v051..v100).
    hosts = [
        cluster.start(host, "client", *cluster.broker_args(), *host_args(host, secret, i, credentials))
        for i, (host, secret) in enumerate(host_ids, start=1)
    ]
    assert coordinator.finish(180) == 0, coordinator.tail()
    run = latest_results(tmp_path / "net")
    rounds = list(csv.DictReader((run / "rounds.csv").open()))
    assert [(r["round"], r["updates"]) for r in rounds] == [(str(i), "50") for i in (1, 2, 3)]
    accepted = list(csv.DictReader((run / "clients.csv").open()))
    assert {r["status"] for r in accepted} == {"accepted"} and len(accepted) == 150
    for host in hosts:
        assert host.finish(30) == 0, host.tail()
        assert "registered: 50 of 50 virtual clients" in "\n".join(host.out), host.tail()
        assert (
            host.out[-1]
            == f"all 50 virtual clients stopped by the coordinator after {rounds_of(run, host.name)} rounds"
        ), host.tail()
    trained = {r["client"] for r in accepted}
    assert any(c[:4] <= "v050" for c in trained) and any(c[:4] > "v050" for c in trained)  # both hosts' clients
    # The same session as a simulation of 100 clients: the same selection, the same data parts.
    assert reference.finish(120) == 0, reference.tail()
    networked, simulated = json.loads(coordinator.out[-1]), json.loads(reference.out[-1])
    assert networked["clients"] == 100
    assert abs(networked["accuracy"] - simulated["accuracy"]) <= 0.005, (networked, simulated)


def rounds_of(run: Path, host: str) -> int:
    """In how many rounds the coordinator selected one of ``host``'s clients (v001..v050: host-a)."""
    rows = csv.DictReader((run / "clients.csv").open())
    return len({r["round"] for r in rows if (r["client"][:4] <= "v050") == host.startswith("host-a")})


def host_args(host: str, secret: str, index: int, credentials: Path) -> list[str]:
    return ["--virtual", "50", "--slice", f"{index}/2", "--host", host, "--secret", secret,
            "--credentials", str(credentials),
            "--dataset", "digits", "--workers", "1"]  # fmt: skip


class RawFrames(WireCodec):
    """Sends the frames it is given, whatever the message: a hand-made attack on the wire."""

    frames: list[bytes]

    async def encode(self, to: str, message: Message) -> bytes:
        return self.frames.pop(0)


def forged(kind: Kind, sender: str, key: bytes, *, session_id: str = "", round: int = 0, body: dict) -> bytes:
    env = make(kind, sender, session_id=session_id, round=round, body=body).envelope
    return wire.encode_frame(sign(env, key), None)


async def test_no_client_or_host_speaks_for_another_hosts_client(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    hosts = {name: net.add(name) for name in ("host-a", "host-b")}
    clients = {name: [net.add(f"{name[-1]}{i}") for i in range(1, 4)] for name in hosts}
    a1_key, (b1, _) = clients["host-a"][0][1], clients["host-b"][0]
    accepted: dict[int, set[str]] = {}
    wire_id = "mallory-wire"  # the attacker's own queue: host-a's must not be purged under it
    net.ids.add(wire_id)
    codec = RawFrames(lambda _to: a1_key, Verifier(lambda _s: None))
    attacks: asyncio.Queue[int] = asyncio.Queue()
    sent = asyncio.Event()  # the forged frames are on the broker, queued for the coordinator

    async def on_round(e: ev.RoundStarted) -> None:
        if e.round == 1:
            attacks.put_nowait(e.round)
        elif e.round == 2:
            # Folded partials finish a round in milliseconds: hold the session (its bus awaits
            # this handler) until the attack is queued, so that it is read before the session ends.
            await asyncio.wait_for(sent.wait(), 60)

    def watch(bus: EventBus) -> None:
        bus.on(ev.UpdateAccepted, lambda e: accepted.setdefault(e.round, set()).add(e.client_id))
        bus.on(ev.RoundStarted, on_round)

    async def attack(session_id: str) -> None:
        made_up = [{"client": b1, "reason": "made up"}]
        round = await attacks.get()  # round 1 is under way: every client registered with its host
        codec.frames = [
            # Virtual client a1 registers b1 with host-a, signed with a1's own key: a forgery.
            forged(Kind.REGISTER, b1, a1_key, body={"num_examples": 10, "host": hosts["host-a"][0]}),
            # host-a, with its own key, reports b1 (host-b's) as failed in this round.
            forged(Kind.PARTIAL, hosts["host-a"][0], hosts["host-a"][1], session_id=session_id, round=round,
                   body={"mode": "none", "attempt": 0, "members": [], "failures": made_up}),
        ]  # fmt: skip
        async with net.broker.transport(wire_id, codec, declares=False) as rogue:
            for _ in range(2):
                await rogue.send(COORDINATOR_ID, make(Kind.HEARTBEAT, wire_id))
        sent.set()

    settings = ClientSettings(register_timeout_s=30, coordinator_timeout_s=30, heartbeat_interval_s=1.0)
    with caplog.at_level(logging.WARNING):
        async with asyncio.timeout(90):
            session = net.coordinator(
                watch, session_id="hosts", rounds=3, min_clients=6, heartbeat_interval_s=1.0, heartbeat_timeout_s=10
            )
            await net.ready.wait()
            runs = []
            for n, (name, ident) in enumerate(hosts.items()):
                parts = [LocalData(dataset="digits", part=f"{3 * n + i}/6") for i in (1, 2, 3)]
                sites = [
                    (key, build_site(cid, BUILTIN, None, data, persist_state=False))
                    for (cid, key), data in zip(clients[name], parts, strict=True)
                ]
                runs.append(asyncio.create_task(run_client_host(ident, sites, net.broker, settings)))
            attacker = asyncio.create_task(attack(session_id="hosts"))
            result = await session
            assert await asyncio.gather(*runs) == [3, 3]
            await attacker
    assert result.rounds == 3
    everyone = {cid for group in clients.values() for cid, _ in group}
    assert accepted == {1: everyone, 2: everyone, 3: everyone}  # b1 stayed host-b's, and was never failed
    lines = [r.getMessage() for r in caplog.records]
    assert any("rejected message" in line and "forged register" in line for line in lines), lines
    assert any(f"{hosts['host-a'][0]} is not the host of every client its partial names" in line for line in lines)


async def test_a_hosts_one_beat_keeps_its_own_clients_online_and_no_others(net: Net) -> None:
    # Liveness is per host: host-a's clients never beat themselves, and stay ONLINE past the
    # heartbeat timeout on host-a's beats alone; a host that no client named (host-r) keeps
    # nobody alive and is asked, with a REGISTERED to itself, to register its clients.
    host_a, rogue = net.add("host-a"), net.add("host-r")
    clients = [net.add(f"a{i}") for i in range(1, 4)]
    late = net.add("late")
    ids = {cid for cid, _ in clients}
    host_beats = asyncio.Event()
    beats: dict[str, int] = {}
    offline: list[str] = []

    def watch(bus: EventBus) -> None:
        def on_message(e: ev.MessageIn) -> None:
            if e.message.kind is Kind.HEARTBEAT:
                beats[e.message.sender] = beats.get(e.message.sender, 0) + 1
                if beats.get(host_a[0], 0) >= 8:  # 8 s of host beats: past the 6 s heartbeat timeout
                    host_beats.set()

        bus.on(ev.MessageIn, on_message)
        bus.on(ev.ClientStatusChanged, lambda e: offline.append(e.client_id) if e.status == "OFFLINE" else None)

    settings = ClientSettings(register_timeout_s=30, coordinator_timeout_s=30)
    async with asyncio.timeout(90):
        session = net.coordinator(
            # A timeout long enough that a loaded 2-core machine's stalls do not pass for silence.
            watch,
            session_id="beats",
            rounds=2,
            min_clients=4,
            heartbeat_interval_s=1.0,
            heartbeat_timeout_s=6.0,
        )
        await net.ready.wait()
        sites = [
            (key, build_site(cid, BUILTIN, None, LocalData(dataset="digits", part=f"{i}/4"), persist_state=False))
            for i, (cid, key) in enumerate(clients, start=1)
        ]
        host = asyncio.create_task(run_client_host(host_a, sites, net.broker, settings))
        async with net.broker.transport(rogue[0], client_codec(*rogue), declares=False) as link:
            body = {"status": "ONLINE", "hosting": 3}
            await link.send(COORDINATOR_ID, make(Kind.HEARTBEAT, rogue[0], body=body))
            answer = await link.recv()
            while answer.kind is Kind.HEARTBEAT:  # the coordinator's own beat may come first
                answer = await link.recv()
        await host_beats.wait()  # only then the last client: the session waits for it
        last = net.honest(late, "4/4")
        result = await session
        assert await host == 2 and await last == 2
    assert answer.kind is Kind.REGISTERED and answer.sender == COORDINATOR_ID
    assert result.rounds == 2
    assert not ids & set(beats), beats  # no hosted client beat on its own
    assert not ids & set(offline), offline  # ... and none went OFFLINE


async def test_a_host_refuses_a_secure_session_rather_than_show_the_coordinator_its_clients_sum(net: Net) -> None:
    # Over a broker no secure-aggregation link answers for a host: a plain partial would be the
    # sum of its clients in the clear, which secure aggregation promises the coordinator never sees.
    host_id = net.add("host-s")
    clients = [net.add(f"s{i}") for i in range(1, 4)]
    partials: list[str] = []

    def watch(bus: EventBus) -> None:
        def on_message(e: ev.MessageIn) -> None:
            if e.message.kind is Kind.PARTIAL and e.message.envelope.body.get("mode") != "none":
                partials.append(e.message.sender)

        bus.on(ev.MessageIn, on_message)

    settings = ClientSettings(register_timeout_s=30, coordinator_timeout_s=30)
    async with asyncio.timeout(90):
        session = net.coordinator(
            watch, session_id="secure", rounds=1, min_clients=3, secure_aggregation=True, max_round_retries=0
        )
        await net.ready.wait()
        sites = [
            (key, build_site(cid, BUILTIN, None, LocalData(dataset="digits", part=f"{i}/3"), persist_state=False))
            for i, (cid, key) in enumerate(clients, start=1)
        ]
        host = asyncio.create_task(run_client_host(host_id, sites, net.broker, settings))
        refused = r"host-s-[0-9a-f]+ cannot sum its clients securely over a broker: run them without --host"
        with pytest.raises(SessionFailed, match=refused):
            await session
        host.cancel()
        await asyncio.gather(host, return_exceptions=True)
    assert partials == []  # no sum of the host's clients ever reached the coordinator
