"""A site's own broker user, without a broker (issue 15): the rights ``BrokerGrant.site`` gives
(checked with the regular expressions RabbitMQ would apply), the peer id an agent derives from
its login, ``fedhive admin site create --broker-user manual`` recording the user and printing the
operator's commands, and the server's view of which sites have one (``SiteLogins``).
The same rights against the real broker: test_broker_isolation_agents.py."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.test_admin_cmd import Result, fedhive, one_error_line  # noqa: F401  (fedhive: a fixture)
from fedhive.errors import ConfigError
from fedhive.runtime.agent import Agent, AgentSites
from fedhive.runtime.networked import BrokerSettings
from fedhive.runtime.peer_rounds import new_peer_id
from fedhive.service.settings import Settings
from fedhive.service.site_logins import SiteLogins
from fedhive.storage import users_repo
from fedhive.storage.database import Database
from fedhive.transports.amqp_topology import Names, broadcast_key, key_word, peer_id, up_binding, up_key
from fedhive.transports.broker_users import BrokerGrant

NS = "fed"
NAMES = Names(NS)


def allows(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None  # RabbitMQ: a match anywhere (the patterns anchor)


def test_a_sites_user_may_do_a_clients_and_its_own_peers_work_and_nothing_of_another_site() -> None:
    grant = BrokerGrant.site("ward-1", namespace=NS)
    up, cast = grant.topics
    mine, theirs = peer_id("ward-1"), peer_id("ward-2")
    # a client of star sessions (and a follower): its own queue, made by the server, and up as itself
    assert allows(grant.read, NAMES.node_queue("ward-1")) and not allows(grant.configure, NAMES.node_queue("ward-1"))
    assert allows(up.write, up_key("coordinator", "ward-1")) and allows(up.write, up_key("combiner-x-1", "ward-1"))
    # a peer: its own peer queues and keys
    for queue in (NAMES.node_queue(mine), NAMES.subscriber_queue(mine)):
        assert allows(grant.configure, queue) and allows(grant.read, queue) and allows(grant.write, queue)
    assert allows(up.write, up_key(theirs, mine)) and allows(up.read, up_binding(mine))
    assert allows(cast.write, broadcast_key("peers.s1", mine)) and allows(cast.read, f"{key_word('peers.s1')}.*")
    # nothing of another site's, nor of the server's
    for queue in (NAMES.node_queue("ward-2"), NAMES.node_queue(theirs), NAMES.node_queue("coordinator")):
        assert not allows(grant.read, queue) and not allows(grant.configure, queue)
    assert not allows(grant.configure, NAMES.node_queue("ward-1x"))
    assert not allows(up.write, up_key("coordinator", "ward-2")) and not allows(up.write, up_key(mine, theirs))
    assert not allows(up.read, up_binding(theirs)) and not allows(up.read, "#")
    assert not allows(cast.write, broadcast_key("peers.s1", theirs)) and not allows(cast.read, "#")
    for exchange in (NAMES.direct_exchange, NAMES.down_exchange):
        assert not allows(grant.write, exchange) and not allows(grant.read, exchange)
    for exchange in (NAMES.up_exchange, NAMES.broadcast_exchange):
        assert not allows(grant.configure, exchange)


def test_a_site_id_no_peer_id_can_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="broker login"):
        BrokerGrant.site("wärd", namespace=NS)


def test_an_agents_peer_id_is_the_servers_random_part_with_its_own_login() -> None:
    drawn = new_peer_id()  # what serve puts in the order
    broker = BrokerSettings("amqp://ward-1:pw@127.0.0.1:5672/fed", NS)
    agent = Agent(b"secret", AgentSites("ward-1", {}), broker)
    assert agent._peer_link(drawn, b"k" * 32).node_id == f"{drawn}:ward-1"
    with pytest.raises(ConfigError, match="random part"):
        agent._peer_link("not-hex", b"k" * 32)
    shared = Agent(b"secret", AgentSites("ward-1", {}), BrokerSettings("amqp://127.0.0.1:5672/", NS))
    assert shared._peer_link(drawn, b"k" * 32).node_id == f"{drawn}:guest"  # a shared login: the broker's default


def test_admin_site_create_with_a_manual_broker_user_records_it_and_prints_the_commands(
    fedhive: Callable[..., Result],  # noqa: F811  (the admin tests' fixture: runs fedhive's main)
    tmp_path: Path,
) -> None:
    home = str(tmp_path / "home")
    args = ["--broker-user", "manual", "--namespace", NS, "--vhost", "fed-vhost", "--home", home]
    made = fedhive("admin", "site", "create", "ward", "--id", "ward-1", "--json", *args)
    assert made.returncode == 0, made
    entry = json.loads(made.stdout)
    assert entry["broker_user"] == "ward-1" and len(entry["broker_password"]) >= 24
    assert entry["broker_password"] not in made.stderr  # the commands read it from $PASSWORD
    expected = BrokerGrant.site("ward-1", namespace=NS, vhost="fed-vhost").shell_lines()
    assert all(line in made.stderr for line in expected), made.stderr
    assert fedhive("admin", "site", "create", "plain", "--id", "plain-1", "--home", home).returncode == 0
    commands = fedhive("admin", "site", "broker-commands", "ward-1", "--namespace", NS, "--vhost", "fed-vhost")
    assert commands.stdout.splitlines() == expected

    db = Database(Settings(home=Path(home)).database_url())
    try:
        logins = SiteLogins(db)
        logins.load()
        assert logins() == {"ward-1": "ward-1"}  # the plain site shares a login: not checked
        seen = logins()
        logins.load()
        assert logins() is seen  # unchanged: the same mapping (SenderLogins caches on it)
        with db.session() as s:
            assert users_repo.site_broker_users(s) == {"ward-1": "ward-1"}
    finally:
        db.dispose()

    revoked = fedhive("admin", "site", "revoke", "ward-1", "--home", home)
    assert revoked.returncode == 0 and "rabbitmqctl delete_user ward-1" in revoked.stderr
    assert "--broker-user" in one_error_line(
        fedhive("admin", "site", "create", "w", "--broker-user", "x", "--home", home)
    )
    assert "broker login" in one_error_line(
        fedhive("admin", "site", "create", "w", "--id", "wärd", "--broker-user", "manual", "--home", home)
    )
