"""POST /sessions/start: what is validated, what is stored, what the launcher is handed, and
that a failure at any step leaves no session behind and loses nothing already stored."""

from __future__ import annotations

import hashlib

import httpx
import numpy as np
import pytest
from api_harness import UPLOAD_LIMIT, Api, one_line_detail

from fedhive.core.codec import encode
from fedhive.storage import models_repo, users_repo
from fedhive.storage.artifacts import ref_for

GOOD_CSV = b"x1,x2,label\n0.1,1.5,cat\n0.2,1.1,dog\n0.3,0.9,cat\n0.4,0.2,dog\n"


async def start(api: Api, headers: dict[str, str], csv: bytes | None = None, **form: object) -> httpx.Response:
    files = {"dataset": ("train.csv", csv, "text/csv")} if csv is not None else None
    data = {k: str(v) for k, v in form.items()}
    response = await api.client.post("/sessions/start", data=data, files=files, headers=headers)
    return response


def datasets_of(api: Api, email: str) -> list[str]:
    with api.services.db.session(read_only=True) as s:
        return [row.id for row in models_repo.list_datasets(s, api.user_id(email))]


async def test_start_hands_the_launcher_the_config_and_locks_peers(api: Api) -> None:
    ann = await api.user("ann@example.org")
    peers = api.online_peers(3)
    response = await start(
        api, ann, model="simple-dnn:32,16", strategy="fedprox:mu=0.1", rounds=4, epochs=2, batch_size=8, lr=0.01,
        min_peers=2,
    )  # fmt: skip
    assert response.status_code == 201, response.text
    session = response.json()
    assert session["status"] == "PENDING" and session["rounds_total"] == 4 and session["rounds_done"] == 0
    (request,) = api.launcher.started
    assert request.owner_id == str(api.user_id("ann@example.org")) and request.min_peers == 2
    config = request.config
    assert (config.model, config.strategy, config.rounds, config.epochs) == ("simple-dnn:32,16", "fedprox:mu=0.1", 4, 2)
    assert (config.batch_size, config.lr, config.min_clients) == (8, 0.01, 2)
    assert request.dataset_id is None and request.initial_model is None
    listed = (await api.client.get("/peers", headers=ann)).json()
    assert sorted(p["status"] for p in listed) == ["ONLINE", "TRAINING", "TRAINING"]
    assert {p["id"] for p in listed} == set(peers)


async def test_defaults_come_from_the_session_config(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    assert (await start(api, ann)).status_code == 201
    config = api.launcher.started[0].config
    assert (config.model, config.strategy, config.rounds) == ("simple-dnn:128,64", "fedavg", 20)


async def test_not_enough_peers_is_400_and_leaves_no_session(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(1)
    response = await start(api, ann, min_peers=2)
    assert response.status_code == 400
    assert one_line_detail(response.json()).startswith("not enough peers: 1 ONLINE, 2 needed")
    assert (await api.client.get("/sessions", headers=ann)).json() == []
    assert [p["status"] for p in (await api.client.get("/peers", headers=ann)).json()] == ["ONLINE"]


async def test_an_uploaded_csv_is_stored_registered_and_handed_over(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, GOOD_CSV, label="label", model="logreg")
    assert response.status_code == 201, response.text
    dataset_id = api.launcher.started[0].dataset_id
    assert dataset_id is not None and response.json()["dataset_id"] == dataset_id
    stored = (await api.client.get(f"/datasets/{dataset_id}", headers=ann)).json()
    digest = hashlib.sha256(GOOD_CSV).hexdigest()
    assert stored["sha256"] == digest and stored["rows"] == 4 and stored["size_bytes"] == len(GOOD_CSV)
    assert stored["columns"] == ["x1", "x2", "label"] and stored["label_column"] == "label"
    assert stored["name"] == "train.csv"
    assert api.services.artifacts.get(ref_for(digest)) == GOOD_CSV


@pytest.mark.parametrize(
    ("csv", "label", "expected"),
    [
        (b"x1,x2,label\n0.1,1.5,cat\n0.2,oops,dog\n", "label", "row 3, column 'x2': 'oops' is not a number"),
        (b"x1,x2,label\n0.1,1.5,cat\n0.2,dog\n", "label", "row 3 has 2 fields, but the header has 3"),
        (b"x1,x2,label\n0.1,,cat\n0.2,1.1,dog\n", "label", "row 2, column 'x2': the value is empty"),
        (GOOD_CSV, "target", "label column 'target' is missing in train.csv"),
        (b"\xff\xfe\x00garbage", "label", "is not UTF-8 text"),
    ],
)
async def test_malformed_csv_is_422_naming_row_and_column(api: Api, csv: bytes, label: str, expected: str) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, csv, label=label)
    assert response.status_code == 422
    detail = one_line_detail(response.json())
    assert expected in detail and "/tmp" not in detail and "fedhive-upload" not in detail
    assert datasets_of(api, "ann@example.org") == [] and api.launcher.started == []


async def test_an_upload_over_the_limit_is_413_and_stores_nothing(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    row = b"0.1,0.2,cat\n"
    big = b"x1,x2,label\n" + row * (UPLOAD_LIMIT // len(row) + 1)
    response = await start(api, ann, big, label="label")
    assert response.status_code == 413
    assert str(UPLOAD_LIMIT) in one_line_detail(response.json())
    way_too_big = b"x1,x2,label\n" + row * (2 * UPLOAD_LIMIT // len(row))
    response = await start(api, ann, way_too_big, label="label")
    assert response.status_code == 413  # refused by the body limit, before the handler runs
    one_line_detail(response.json())
    assert datasets_of(api, "ann@example.org") == [] and api.launcher.started == []


async def test_a_streamed_upload_without_content_length_is_cut_off_at_the_limit(api: Api) -> None:
    ann = await api.user("ann@example.org")
    sent = 0

    async def body():  # type: ignore[no-untyped-def]
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="dataset"; filename="a.csv"\r\n\r\n'
        for _ in range(1000):  # 16 MiB offered, far over the limit
            sent += 16384
            yield b"1" * 16384
        yield b"\r\n--b--\r\n"

    headers = {**ann, "Content-Type": "multipart/form-data; boundary=b"}
    response = await api.client.post("/sessions/start", content=body(), headers=headers)
    assert response.status_code == 413
    assert sent < 8 * UPLOAD_LIMIT  # reading stopped soon after the limit, not at the end


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"model": "resnet-9000"}, "unknown model 'resnet-9000'"),
        ({"model": "simple-dnn:a,b"}, "hidden sizes must be integers"),
        ({"strategy": "fedbest"}, "unknown strategy 'fedbest'"),
        ({"strategy": "fedprox:mu=-1"}, "mu"),
        ({"rounds": 0}, "rounds"),
        ({"lr": "nan"}, "lr"),
        ({"min_peers": "two"}, "min_peers"),
        ({"model_version": 2}, "model_version: needs model_name"),
        ({"model": "logreg", "model_name": "seed"}, "not both"),
        ({"label": "label"}, "label"),
    ],
)
async def test_bad_settings_are_422_and_start_nothing(api: Api, form: dict[str, object], field: str) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, **form)
    assert response.status_code == 422
    assert field in one_line_detail(response.json())
    assert api.launcher.started == [] and (await api.client.get("/sessions", headers=ann)).json() == []


async def test_a_model_that_cannot_read_the_data_is_422(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    response = await start(api, ann, GOOD_CSV, label="label", model="cnn")
    assert response.status_code == 422
    assert "784 features" in one_line_detail(response.json())


async def test_a_deleted_user_with_a_valid_token_gets_404(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    with api.services.db.session() as s:  # deleted behind the API's back: the token stays valid
        s.delete(users_repo.get_user(s, api.user_id("ann@example.org")))
    response = await start(api, ann, GOOD_CSV, label="label")
    assert response.status_code == 404
    assert "does not exist" in one_line_detail(response.json())
    assert api.launcher.started == []


async def test_a_stored_dataset_survives_a_failed_start_and_can_be_reused(api: Api) -> None:
    ann = await api.user("ann@example.org")
    failed = await start(api, ann, GOOD_CSV, label="label")
    assert failed.status_code == 400
    (dataset_id,) = datasets_of(api, "ann@example.org")  # kept: the user's, listed, reusable
    assert (await api.client.get("/sessions", headers=ann)).json() == []
    again = await start(api, ann, GOOD_CSV, label="label")  # the same upload again: the same data set
    assert again.status_code == 400 and datasets_of(api, "ann@example.org") == [dataset_id]
    api.online_peers(2)
    response = await start(api, ann, dataset_id=dataset_id, model="logreg")
    assert response.status_code == 201 and response.json()["dataset_id"] == dataset_id
    bob = await api.user("bob@example.org")
    theirs = await start(api, bob, dataset_id=dataset_id)
    assert theirs.status_code == 404


async def test_starting_from_a_registered_model(api: Api) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    seed = encode({"linear.weight": np.zeros((2, 2), np.float32), "linear.bias": np.zeros(2, np.float32)})
    files = {"file": ("seed.safetensors", seed, "application/octet-stream")}
    upload = await api.client.post("/models", data={"name": "seed", "model_spec": "logreg"}, files=files, headers=ann)
    assert upload.status_code == 201, upload.text
    response = await start(api, ann, GOOD_CSV, label="label", model_name="seed")
    assert response.status_code == 201, response.text
    request = api.launcher.started[0]
    assert request.initial_model == ("seed", 1) and request.config.model == "logreg"
    bob = await api.user("bob@example.org")
    assert (await start(api, bob, model_name="seed")).status_code == 404
    assert (await start(api, ann, model_name="seed", model_version=7)).status_code == 404


@pytest.mark.parametrize("filename", ["..", "../../etc/passwd", "a\x01b.csv", "x" * 400 + ".csv"])
async def test_any_upload_file_name_is_stored_safely(api: Api, filename: str) -> None:
    ann = await api.user("ann@example.org")
    api.online_peers(2)
    files = {"dataset": (filename, GOOD_CSV, "text/csv")}
    response = await api.client.post("/sessions/start", data={"label": "label"}, files=files, headers=ann)
    assert response.status_code == 201, response.text
    stored = (await api.client.get(f"/datasets/{response.json()['dataset_id']}", headers=ann)).json()
    assert "/" not in stored["name"] and "\x01" not in stored["name"] and 0 < len(stored["name"]) <= 255
