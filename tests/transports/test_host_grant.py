"""A client host's broker rights and the coordinator's login check, without a broker: the topic
permission lets the host's user publish as the host and as ids that name it, and nothing else;
``SenderLogins`` takes a hosted client's message only from its host's login; the store records
which host answers for which client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedhive.errors import ConfigError
from fedhive.runtime.credentials import CredentialStore
from fedhive.transports.amqp_topology import host_named, hosted_id, up_key
from fedhive.transports.broker_users import BrokerGrant, SenderLogins


def publishable(grant: BrokerGrant, key: str) -> bool:
    (up,) = grant.topics
    return re.search(up.write, key) is not None


def test_a_hosts_user_publishes_only_as_itself_and_its_clients() -> None:
    grant = BrokerGrant.host("gw-1-abc", namespace="ns")
    assert grant.configure == "^$" and grant.read == "^ns\\.node\\.gw\\-1\\-abc$"
    mine = hosted_id("v-01-123456", "gw-1-abc")
    for sender in ("gw-1-abc", mine):
        assert publishable(grant, up_key("coordinator", sender)), sender
    for sender in ("gw-2-abc", hosted_id("v-01-123456", "gw-2-abc"), "v-01-123456", "gw-1-abcd", "x:gw-1-abc:y",
                   "x%2Egw-1-abc"):  # fmt: skip
        assert not publishable(grant, up_key("coordinator", sender)), sender
    assert not publishable(grant, "coordinator.a.gw-1-abc")  # a '.' in an id is escaped, never a word break


def test_the_coordinator_takes_a_hosted_clients_message_only_from_its_hosts_login(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "clients.json")
    host_a, _ = store.add("gw-a", broker_user=True, role="host")
    host_b, _ = store.add("gw-b", broker_user=True, role="host")
    a1, _ = store.add("a1", hosted_by=host_a)
    b1, _ = store.add("b1", hosted_by=host_b)
    assert host_named(a1) == host_a and store.hosts() == {a1: host_a, b1: host_b}
    logins = SenderLogins(store.broker_users, store.combiners, store.hosts)
    assert set(logins.provisioned()) == {host_a, host_b}  # hosted clients have no queue to declare
    assert logins.host_of(a1) == host_a and logins.host_of(host_a) is None
    assert logins(a1, host_a) is None and logins(host_a, host_a) is None
    assert logins(b1, host_a) == f"published by broker user {host_a!r}, but {b1}'s broker user is {host_b!r}"
    with pytest.raises(ConfigError, match="no host of that id"):
        store.add("c1", hosted_by=a1)  # a client is not a host
