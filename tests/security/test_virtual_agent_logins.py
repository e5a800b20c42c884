"""``fedhive agent --virtual N --credentials FILE``: which broker login each virtual agent gets
(``cli.agent_logins``), without a broker. The broker's own answer to these logins is in
``test_broker_isolation_virtual_agents.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedhive.cli.agent_logins import BrokerLogin, agent_broker_urls, read_broker_logins, with_login
from fedhive.errors import ConfigError
from fedhive.runtime.credentials import write_secret_file
from fedhive.transports.amqp_topology import login_of

BROKER = "amqp://broker.example.org:5672/fed%2Fhive?heartbeat=30"
PASSWORD = "p@ss:w/rd%1"  # every character a URL's login has to escape


def sites_file(path: Path, entries: list[dict[str, str]]) -> Path:
    write_secret_file(path, "".join(json.dumps(e) + "\n" for e in entries), overwrite=False)
    return path


def site(i: int, *, login: bool = True) -> dict[str, str]:
    entry = {"client_id": f"ward-{i}", "secret": "s" * 43, "name": f"ward-{i}"}
    return entry | ({"broker_user": f"ward-{i}", "broker_password": f"{PASSWORD}{i}"} if login else {})


def test_each_site_logs_in_as_its_own_user_at_the_broker_url(tmp_path: Path) -> None:
    path = sites_file(tmp_path / "sites.jsonl", [site(2), site(1)])
    urls = agent_broker_urls(BROKER, ["ward-1", "ward-2"], path)
    assert [login_of(u) for u in urls] == ["ward-1", "ward-2"]
    assert urls[0] == "amqp://ward-1:p%40ss%3Aw%2Frd%251" + "1@broker.example.org:5672/fed%2Fhive?heartbeat=30"


def test_a_login_in_the_broker_url_is_replaced() -> None:
    url = with_login("amqps://guest:guest@[::1]:5671/", BrokerLogin("ward-1", "pw"))
    assert url == "amqps://ward-1:pw@[::1]:5671/"
    with pytest.raises(ConfigError, match="a port that is a number"):
        with_login("amqp://host:port/", BrokerLogin("ward-1", "pw"))


def test_without_broker_logins_every_agent_shares_the_broker_url(tmp_path: Path) -> None:
    path = sites_file(tmp_path / "sites.jsonl", [site(1, login=False), site(2, login=False)])
    assert agent_broker_urls(BROKER, ["ward-1", "ward-2"], path) == [BROKER, BROKER]
    assert agent_broker_urls(BROKER, ["ward-1"], None) == [BROKER]


def test_some_sites_with_a_login_and_some_without_are_refused(tmp_path: Path) -> None:
    path = sites_file(tmp_path / "sites.jsonl", [site(1), site(2, login=False)])
    with pytest.raises(ConfigError, match="site ward-2 has no broker login but others do"):
        read_broker_logins(path, ["ward-1", "ward-2"])


def test_a_broker_user_without_its_password_is_refused_without_showing_anything_secret(tmp_path: Path) -> None:
    half = site(1) | {"broker_password": ""}
    path = sites_file(tmp_path / "sites.jsonl", [half, site(2)])
    with pytest.raises(ConfigError, match="site ward-1 has a broker user without a password") as caught:
        read_broker_logins(path, ["ward-1", "ward-2"])
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(read_broker_logins(sites_file(tmp_path / "ok.jsonl", [site(1)]), ["ward-1"]))


def test_a_file_of_passwords_others_may_read_gets_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = sites_file(tmp_path / "sites.jsonl", [site(1)])
    read_broker_logins(path, ["ward-1"])
    assert capsys.readouterr().err == ""
    os.chmod(path, 0o644)
    read_broker_logins(path, ["ward-1"])
    assert f"run: chmod 600 {path}" in capsys.readouterr().err
