"""Whole federations with every node under a least-privilege broker user of its own (issue 15): a
hierarchical session (coordinator, two combiners, four clients) and a decentralised one (three
peers) complete. Only the coordinator logs in with rights to configure; the combiners' and
clients' users may configure nothing, the peers' only their own queues.

The nodes run in this process (as tests/networked/test_hierarchy_amqp.py does), each with its own
AMQP connection, login, codec and identity, exactly as separate processes would.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from broker_sandbox import BrokerSandbox, provision_clients
from test_broker_isolation_peers import KEY, provision_peers

from fedhive.app.loader import BUILTIN
from fedhive.cli.session_file import load_session_file
from fedhive.cli.site_options import build_site
from fedhive.learning.local_data import LocalData
from fedhive.runtime.credentials import CredentialStore, parse_secret
from fedhive.runtime.hierarchy_networked import run_combiner, run_hierarchical_client, run_hierarchical_coordinator
from fedhive.runtime.networked import BrokerSettings, ClientSettings
from fedhive.runtime.peer_networked import PeerSettings, run_peer
from fedhive.runtime.session_config import make_config

sys.path.insert(0, str(Path(__file__).parent.parent / "networked"))
from amqp_cluster import session_toml  # the networked tests' helpers

pytestmark = [pytest.mark.amqp, pytest.mark.slow]


def site(name: str, part: str) -> object:
    return build_site(name, BUILTIN, None, LocalData(dataset="digits", partition="dirichlet:0.5", part=part))


async def test_a_hierarchical_session_of_least_privilege_nodes_completes(
    sandbox: BrokerSandbox, tmp_path: Path
) -> None:
    path = tmp_path / "clients.json"
    combiners = provision_clients(sandbox, path, 2, role="combiner", name="comb")
    clients = provision_clients(sandbox, path, 4)
    store = CredentialStore(path)

    def broker(node: dict[str, str] | None) -> BrokerSettings:
        url = sandbox.admin_url if node is None else sandbox.url(node["broker_user"], node["broker_password"])
        return BrokerSettings(url, sandbox.namespace)

    session = load_session_file(session_toml(tmp_path / "s.toml", rounds=3, min_clients=4, heartbeat_timeout_s=20.0))
    combiner_runs = [
        asyncio.create_task(run_combiner(c["client_id"], parse_secret(c["secret"]), store, broker(c)))
        for c in combiners
    ]
    client_runs = [
        asyncio.create_task(
            run_hierarchical_client(
                parse_secret(c["secret"]),
                site(c["client_id"], f"{i}/4"),  # type: ignore[arg-type]
                broker(c),
                ClientSettings(register_timeout_s=60),
            )
        )
        for i, c in enumerate(clients, start=1)
    ]
    async with asyncio.timeout(240):
        result = await run_hierarchical_coordinator(session, store, broker(None), min_combiners=2)
        trained = await asyncio.gather(*client_runs)
        combined = await asyncio.gather(*combiner_runs)
    assert result.rounds == 3
    assert sum(trained) > 0 and combined == [3, 3]


async def test_a_peer_federation_of_least_privilege_peers_completes(sandbox: BrokerSandbox, tmp_path: Path) -> None:
    peers = provision_peers(sandbox, tmp_path, 3)
    config = make_config(rounds=3, model="logreg-np", lr=0.1, seed=0, min_clients=3, round_timeout_s=60)
    settings = PeerSettings(min_peers=3, beat_s=0.3, peer_timeout_s=10.0, discovery_timeout_s=90.0)
    runs = [
        run_peer(
            KEY,
            site(f"peer-{i}", f"{i}/3"),  # type: ignore[arg-type]
            config,
            BrokerSettings(p.url, sandbox.namespace),
            settings,
            seed_index=i - 1,
        )
        for i, p in enumerate(peers, start=1)
    ]
    async with asyncio.timeout(240):
        histories = await asyncio.gather(*runs)
    assert [len(h) for h in histories] == [3, 3, 3]
    last = {h[-1].digest for h in histories}
    assert len(last) == 1, "the peers hold different models"
    owners = {h[-1].peer_id.rsplit(":", 1)[1] for h in histories}
    assert owners == {p.login for p in peers}  # each peer's id names its own login
