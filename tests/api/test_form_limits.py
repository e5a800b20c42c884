"""A form's files and fields are capped per route (``api.form_limits``): Starlette's defaults allow
1000 of each, far more than any of fedhive's forms holds."""

from __future__ import annotations

from api_harness import Api


async def test_a_form_over_its_route_caps_is_400_and_starts_nothing(api: Api) -> None:
    api.online_peers(2)
    ann = await api.user("ann@example.org")
    fields = {f"extra{i}": "x" for i in range(40)}  # /sessions/start takes 32 fields at most
    response = await api.client.post("/sessions/start", data={"model": "logreg", **fields}, headers=ann)
    assert response.status_code == 400 and "fields" in response.json()["detail"], response.text
    files = {"dataset": ("a.csv", b"x,y\n1,0\n"), "other": ("b.csv", b"x,y\n1,0\n")}  # one file at most
    response = await api.client.post("/sessions/start", data={"label": "y"}, files=files, headers=ann)
    assert response.status_code == 400 and "files" in response.json()["detail"], response.text
    assert api.launcher.started == []
    # Within the caps the same route works.
    response = await api.client.post("/sessions/start", data={"model": "logreg"}, headers=ann)
    assert response.status_code == 201, response.text
