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


async def test_a_malformed_multipart_body_is_400_not_a_server_error(api: Api) -> None:
    """Found by the schema fuzzer: a part whose header line is not a header made the parser raise
    past the route (500)."""
    ann = await api.user("ann@example.org")
    boundary = "a222103b9b30b1f9e8be6882ecedb1d2"
    body = f"--{boundary}\r\n[]--{boundary}--\r\n".encode()
    headers = {**ann, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    response = await api.client.post("/sessions/start", content=body, headers=headers)
    assert response.status_code == 400 and "form could not be read" in response.json()["detail"], response.text
    assert api.launcher.started == []
