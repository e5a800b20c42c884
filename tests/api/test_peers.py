"""Peers: admins register them (the secret is shown once), every user sees their live status."""

from __future__ import annotations

from api_harness import Api, one_line_detail

from fedhive.storage import users_repo
from fedhive.storage.models import ClientStatus, Role


async def test_an_admin_registers_a_peer_and_gets_its_secret_once(api: Api) -> None:
    root = await api.admin()
    response = await api.client.post("/peers", json={"name": "hospital-a", "id": "hospital-a"}, headers=root)
    assert response.status_code == 201, response.text
    credential = response.json()
    assert credential["id"] == "hospital-a" and len(credential["secret"]) >= 40
    with api.services.db.session(read_only=True) as s:  # the coordinator verifies with this key
        box = api.services.settings.secret_box()
        assert users_repo.get_client_secret(s, "hospital-a", box) == credential["secret"].encode()
    listed = await api.client.get("/peers", headers=root)
    assert credential["secret"] not in listed.text
    (peer,) = listed.json()
    assert (peer["id"], peer["status"], peer["last_heartbeat"]) == ("hospital-a", "OFFLINE", None)
    again = await api.client.post("/peers", json={"name": "dup", "id": "hospital-a"}, headers=root)
    assert again.status_code == 409
    one_line_detail(again.json())
    generated = await api.client.post("/peers", json={"name": "edge"}, headers=root)
    assert generated.status_code == 201 and generated.json()["id"] != "hospital-a"


async def test_every_user_sees_peer_status_heartbeat_and_epoch(api: Api) -> None:
    ann = await api.user("ann@example.org")
    online, idle = api.online_peers(2)
    with api.services.db.session() as s:
        users_repo.record_heartbeat(
            s, online, status=ClientStatus.TRAINING, epoch=4, epochs=5, metrics={"loss": 0.25, "accuracy": 0.9}
        )
    peers = {p["id"]: p for p in (await api.client.get("/peers", headers=ann)).json()}
    assert peers[online]["status"] == "TRAINING" and peers[online]["epoch"] == 4
    assert (peers[online]["loss"], peers[online]["accuracy"]) == (0.25, 0.9)
    assert peers[idle]["status"] == "ONLINE" and peers[idle]["last_heartbeat"] is not None
    only = (await api.client.get("/peers", params={"status": "ONLINE"}, headers=ann)).json()
    assert [p["id"] for p in only] == [idle]


async def test_a_demoted_admin_loses_the_role_at_once(api: Api) -> None:
    root = await api.admin()
    with api.services.db.session() as s:  # the token still says "admin"; the database decides
        user = users_repo.get_user(s, api.user_id("root@example.org"))
        assert user is not None
        user.role = Role.USER
    response = await api.client.post("/peers", json={"name": "edge"}, headers=root)
    assert response.status_code == 403
