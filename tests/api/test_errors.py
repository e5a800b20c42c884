"""Error answers: one line of JSON, the right status, and never a traceback or an internal name."""

from __future__ import annotations

import logging

import pytest
from api_harness import Api, one_line_detail

from fedhive.errors import ProtocolError, SessionFailed, StorageError


async def test_an_unexpected_failure_is_a_logged_500_without_details(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    ann = await api.user("ann@example.org")
    api.launcher.fail_with = RuntimeError("boom: internal secret state")
    with caplog.at_level(logging.ERROR, logger="fedhive.api"):
        response = await api.client.post("/sessions/start", data={"min_peers": "1"}, headers=ann)
    assert response.status_code == 500
    assert one_line_detail(response.json()) == "internal server error"
    assert "boom" not in response.text
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "boom: internal secret state" in caplog.text and "Traceback" in caplog.text


@pytest.mark.parametrize(
    ("error", "status", "detail"),
    [
        (StorageError("cannot connect to database postgresql://fedhive@db-7.internal/prod"), 503, "unavailable"),
        (SessionFailed("the data set has 3 rows, too few for 5 peers"), 422, "too few for 5 peers"),
        (ProtocolError("unexpected envelope"), 500, "internal server error"),
    ],
)
async def test_fedhive_errors_map_to_statuses(api: Api, error: Exception, status: int, detail: str) -> None:
    ann = await api.user("ann@example.org")
    api.launcher.fail_with = error
    response = await api.client.post("/sessions/start", data={"min_peers": "1"}, headers=ann)
    assert response.status_code == status
    assert detail in one_line_detail(response.json())
    assert "db-7.internal" not in response.text


async def test_a_json_body_over_the_limit_is_413_before_it_is_read(api: Api) -> None:
    huge = b'{"email": "' + b"a" * (2 * 1024 * 1024) + b'@x.org", "password": "whatever1"}'
    response = await api.client.post("/auth/signup", content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "over the limit of 1048576 bytes" in one_line_detail(response.json())


async def test_framework_errors_are_one_line_json_too(api: Api) -> None:
    missing = await api.client.get("/no/such/route")
    assert missing.status_code == 404 and one_line_detail(missing.json()) == "Not Found"
    wrong_method = await api.client.put("/health")
    assert wrong_method.status_code == 405
    one_line_detail(wrong_method.json())
    bad_json = await api.client.post("/auth/signup", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 422 and "JSON decode error" in one_line_detail(bad_json.json())
    several = await api.client.post("/auth/signup", json={})
    assert several.status_code == 422 and "(and 1 more problems)" in one_line_detail(several.json())


async def test_control_characters_and_lone_surrogates_are_422_not_storage_errors(api: Api) -> None:
    for escaped in (r"ann\u0000@example.org", r"ann\ud800@example.org", r"ann\u0007@example.org"):
        body = '{"email": "' + escaped + '", "password": "long enough"}'  # JSON escapes, sent as such
        response = await api.client.post("/auth/signup", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert one_line_detail(response.json()).startswith("email")
