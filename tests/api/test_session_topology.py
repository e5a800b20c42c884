"""POST /sessions/start's ``topology`` and ``combiners``: what the launcher is handed, and that a
bad combination is 422 with one line naming the field, starting nothing. What the session manager
itself refuses (``service.topology``) is checked without the API below."""

from __future__ import annotations

import pytest
from api_harness import Api, one_line_detail

from fedhive.errors import ConfigError
from fedhive.runtime.session_config import make_config
from fedhive.service.launcher import SessionRequest
from fedhive.service.topology import topology_data


async def test_each_topology_reaches_the_launcher(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(9)
    forms = [
        ({}, ("star", 0)),
        ({"topology": "hierarchical"}, ("hierarchical", 2)),
        ({"topology": "hierarchical", "combiners": "3", "min_peers": "3"}, ("hierarchical", 3)),
        ({"topology": "decentralised"}, ("decentralised", 0)),
    ]
    for form, _ in forms:
        r = await api.client.post("/sessions/start", data={"model": "logreg", **form}, headers=ann)
        assert r.status_code == 201, r.text
    assert [(q.topology, q.combiners) for q in api.launcher.started] == [want for _, want in forms]


@pytest.mark.parametrize(
    ("form", "detail"),
    [
        ({"topology": "ring"}, "topology: must be one of star, hierarchical, decentralised"),
        ({"combiners": "2"}, "combiners: only a hierarchical session has combiners"),
        ({"topology": "decentralised", "combiners": "2"}, "combiners: only a hierarchical session has combiners"),
        ({"topology": "hierarchical", "combiners": "3"}, "combiners: 3 combiners need min_peers of at least 3"),
        ({"topology": "hierarchical", "combiners": "0"}, "combiners"),
    ],
)
async def test_a_bad_topology_is_422_and_starts_nothing(api: Api, form: dict[str, str], detail: str) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    r = await api.client.post("/sessions/start", data={"model": "logreg", **form}, headers=ann)
    assert r.status_code == 422
    line = one_line_detail(r.json())
    assert detail in line and "\n" not in line
    assert api.launcher.started == [] and (await api.client.get("/sessions", headers=ann)).json() == []


def request(topology: str, *, combiners: int = 0, min_peers: int = 3, **config: object) -> SessionRequest:
    return SessionRequest("1", make_config(**config), min_peers, topology=topology, combiners=combiners)


@pytest.mark.parametrize(
    ("req", "nodes", "message"),
    [
        (request("mesh"), True, "topology: 'mesh' is not one of"),
        (request("hierarchical", combiners=2), False, "this server runs star sessions only"),
        (request("hierarchical", combiners=4), True, "combiners: 4 combiners need min_peers of at least 4"),
        (request("star", combiners=1), True, "combiners: only a hierarchical session"),
        (request("decentralised", min_peers=1), True, "min_peers: a decentralised session needs at least 2"),
        (request("decentralised", secure_aggregation=True), True, "no secure or asynchronous aggregation"),
    ],
)
def test_the_manager_refuses_what_its_topology_cannot_run(req: SessionRequest, nodes: bool, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        topology_data(req, runs_nodes=nodes)


def test_the_config_keeps_the_topology() -> None:
    assert topology_data(request("star"), runs_nodes=False) == {}
    assert topology_data(request("hierarchical", combiners=2), runs_nodes=True) == {
        "topology": "hierarchical",
        "combiners": 2,
    }
    assert topology_data(request("decentralised"), runs_nodes=True) == {"topology": "decentralised"}


async def test_remote_combiners_reach_the_launcher_by_word_or_by_name(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(9)
    forms = [{"combiners": "remote"}, {"combiners": " comb-a, comb-b ,comb-a"}, {"combiners": "2"}]
    for form in forms:
        r = await api.client.post("/sessions/start", data={"model": "logreg", "topology": "hierarchical", **form},
                                  headers=ann)  # fmt: skip
        assert r.status_code == 201, r.text
    got = [(q.combiners, q.remote_combiners) for q in api.launcher.started]
    assert got == [(0, ()), (0, ("comb-a", "comb-b")), (2, None)]
    r = await api.client.post(
        "/sessions/start", data={"model": "logreg", "topology": "hierarchical", "combiners": "a b"}, headers=ann
    )
    assert r.status_code == 422 and "combiners: a number, 'remote'" in one_line_detail(r.json())


def test_remote_combiners_keep_only_the_topology_until_claimed() -> None:
    remote = SessionRequest("1", make_config(), 3, topology="hierarchical", remote_combiners=())
    assert topology_data(remote, runs_nodes=True) == {"topology": "hierarchical"}
    both = SessionRequest("1", make_config(), 3, topology="hierarchical", combiners=2, remote_combiners=())
    with pytest.raises(ConfigError, match="a number to start or remote combiners, not both"):
        topology_data(both, runs_nodes=True)
    star = SessionRequest("1", make_config(), 3, remote_combiners=())
    with pytest.raises(ConfigError, match="only a hierarchical session has combiners"):
        topology_data(star, runs_nodes=True)
