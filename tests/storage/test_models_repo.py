"""The model registry and data sets on SQLite and PostgreSQL: numbering, atomicity, ownership."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from fedhive.errors import DataError, StorageError
from fedhive.storage import models_repo as repo
from fedhive.storage.database import AlreadyExists, Database, NotFound
from fedhive.storage.sessions_repo import create_session, get_session
from fedhive.storage.users_repo import create_user

REF = "sha256:" + "c" * 64
SPEC = {"fc1.weight": {"shape": [64, 4], "dtype": "float32"}, "fc1.bias": {"shape": [64], "dtype": "float32"}}


def users(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return create_user(s, "ann@example.org", "h").id, create_user(s, "bob@example.org", "h").id


def add(db: Database, owner: int, name: str, **kw: Any) -> int:
    with db.session() as s:
        return repo.add_model_version(s, owner, name, artifact_ref=REF, spec=SPEC, model_spec="mlp:64", **kw).version


def test_versions_count_up_per_model_and_owner(db: Database) -> None:
    ann, bob = users(db)
    with db.session() as s:
        repo.create_model(s, ann, "iris")
    assert [add(db, ann, "iris") for _ in range(3)] == [1, 2, 3]
    assert add(db, bob, "iris", create=True) == 1  # same name, other owner: another model
    assert add(db, ann, "digits", create=True, metrics={"accuracy": 0.9}) == 1
    with db.session(read_only=True) as s:
        assert [m.name for m in repo.list_models(s, ann)] == ["digits", "iris"]
        latest = repo.get_model_version(s, ann, "iris")
        assert latest is not None and latest.version == 3 and latest.spec == SPEC and latest.model_spec == "mlp:64"
        second = repo.get_model_version(s, ann, "iris", 2)
        assert second is not None and second.version == 2 and second.artifact_ref == REF
        assert repo.get_model_version(s, ann, "iris", 9) is None
        assert repo.get_model_version(s, bob, "digits") is None  # ann's model, invisible to bob
        assert [v.version for v in repo.list_model_versions(s, ann, "iris")] == [1, 2, 3]
    with pytest.raises(AlreadyExists, match="iris"), db.session() as s:
        repo.create_model(s, ann, "iris")
    with pytest.raises(NotFound, match="no model named 'nope'"), db.session() as s:
        repo.add_model_version(s, ann, "nope", artifact_ref=REF, spec={}, model_spec="m")


def test_a_failing_version_leaves_no_model_and_no_used_number(db: Database) -> None:
    ann, _ = users(db)
    with db.session() as s:
        with pytest.raises(StorageError, match="cannot add a version to model 'iris'"):
            # Model created, counter bumped, then the version's insert fails (no such session).
            repo.add_model_version(
                s, ann, "iris", artifact_ref=REF, spec={}, model_spec="m", session_id="gone", create=True
            )
        assert repo.get_model(s, ann, "iris") is None
    assert add(db, ann, "iris", create=True) == 1  # number 1 was not used up by the failure
    with db.session() as s, pytest.raises(StorageError, match="malformed artifact reference"):
        repo.add_model_version(s, ann, "iris", artifact_ref="latest.pt", spec={}, model_spec="m")
    assert add(db, ann, "iris") == 2


def test_concurrent_versions_get_distinct_consecutive_numbers(db: Database) -> None:
    ann, _ = users(db)
    with db.session() as s:
        repo.create_model(s, ann, "iris")
    start = threading.Barrier(4)

    def add_two(_: int) -> list[int]:
        start.wait()
        return [add(db, ann, "iris") for _ in range(2)]

    with ThreadPoolExecutor(4) as pool:
        versions = [v for batch in pool.map(add_two, range(4)) for v in batch]
    assert sorted(versions) == list(range(1, 9))


def test_versions_link_to_the_session_that_trained_them(db: Database) -> None:
    ann, _ = users(db)
    with db.session() as s:
        sid = create_session(s, owner_id=ann, config={}, rounds_total=1).id
    add(db, ann, "iris", create=True, session_id=sid)
    with db.session(read_only=True) as s:
        version = repo.get_model_version(s, ann, "iris")
        assert version is not None and version.session_id == sid


def test_datasets_belong_to_their_owner(db: Database) -> None:
    ann, bob = users(db)
    with db.session() as s:
        ds = repo.create_dataset(
            s,
            ann,
            "iris.csv",
            artifact_ref=REF,
            rows=150,
            columns=["sepal_length", "sepal_width", "species"],
            size_bytes=4551,
            label_column="species",
        )
        sid = create_session(s, owner_id=ann, config={}, rounds_total=1, dataset_id=ds.id).id
    with db.session(read_only=True) as s:
        got = repo.get_dataset(s, ds.id, owner_id=ann)
        assert got is not None and got.sha256 == "c" * 64 and got.columns[-1] == "species" and got.rows == 150
        assert repo.get_dataset(s, ds.id, owner_id=bob) is None
        assert [d.id for d in repo.list_datasets(s, ann)] == [ds.id] and repo.list_datasets(s, bob) == []
        assert get_session(s, sid, owner_id=ann).dataset_id == ds.id  # type: ignore[union-attr]
    with pytest.raises(DataError, match="label column 'kind'"), db.session() as s:
        repo.create_dataset(s, ann, "x.csv", artifact_ref=REF, rows=1, columns=["a"], size_bytes=1, label_column="kind")
