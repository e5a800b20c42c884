"""The model registry (named models, numbered versions) and uploaded data sets.

Everything here belongs to one user: every lookup takes ``owner_id``, so one user can never read
another's models or data sets by guessing a name or an id.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from fedhive.errors import DataError
from fedhive.storage.artifacts import digest_of
from fedhive.storage.database import AlreadyExists, NotFound, atomic
from fedhive.storage.models import DatasetRow, ModelRow, ModelVersionRow, json_document


def create_model(s: Session, owner_id: int, name: str) -> ModelRow:
    """A new, empty model; ``AlreadyExists`` if the user already has one by that name."""
    if get_model(s, owner_id, name) is not None:
        raise AlreadyExists(f"a model named {name!r} already exists")
    row = ModelRow(owner_id=owner_id, name=name, latest_version=0)
    with atomic(s, f"cannot create model {name!r}"):
        s.add(row)
        s.flush()
    return row


def get_model(s: Session, owner_id: int, name: str) -> ModelRow | None:
    return s.scalar(sa.select(ModelRow).where(ModelRow.owner_id == owner_id, ModelRow.name == name))


def list_models(s: Session, owner_id: int) -> list[ModelRow]:
    return list(s.scalars(sa.select(ModelRow).where(ModelRow.owner_id == owner_id).order_by(ModelRow.name)))


def add_model_version(
    s: Session,
    owner_id: int,
    name: str,
    *,
    artifact_ref: str,
    spec: Mapping[str, Any],
    model_spec: str,
    session_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    create: bool = False,
) -> ModelVersionRow:
    """Add the next version (1, 2, ...) of a model; with ``create`` the model is made if missing,
    in the same unit. ``NotFound`` if it is missing and ``create`` is false.

    The number comes from one ``UPDATE models SET latest_version = latest_version + 1 ...
    RETURNING``: the row lock (PostgreSQL) or the write lock (SQLite) makes concurrent callers
    take turns, so two versions never get the same number and none is skipped."""
    digest_of(artifact_ref)  # refuse a malformed reference before writing anything
    spec, metrics = json_document(spec, "parameter spec"), json_document(metrics or {}, "model metrics")
    with atomic(s, f"cannot add a version to model {name!r}"):
        if create and get_model(s, owner_id, name) is None:
            s.add(ModelRow(owner_id=owner_id, name=name, latest_version=0))
            s.flush()
        bumped = s.execute(
            sa.update(ModelRow)
            .where(ModelRow.owner_id == owner_id, ModelRow.name == name)
            .values(latest_version=ModelRow.latest_version + 1)
            .returning(ModelRow.id, ModelRow.latest_version)
            .execution_options(synchronize_session="fetch")
        ).one_or_none()
        if bumped is None:
            raise NotFound(f"no model named {name!r}")
        model_id, version = bumped
        row = ModelVersionRow(
            model_id=model_id,
            version=version,
            artifact_ref=artifact_ref,
            spec=spec,
            model_spec=model_spec,
            session_id=session_id,
            metrics=metrics,
        )
        s.add(row)
        s.flush()
    return row


def get_model_version(s: Session, owner_id: int, name: str, version: int | None = None) -> ModelVersionRow | None:
    """A version of a user's model by number, or the newest when ``version`` is None."""
    query = (
        sa.select(ModelVersionRow)
        .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
        .where(ModelRow.owner_id == owner_id, ModelRow.name == name)
    )
    if version is not None:
        return s.scalar(query.where(ModelVersionRow.version == version))
    return s.scalar(query.order_by(ModelVersionRow.version.desc()).limit(1))


def list_model_versions(s: Session, owner_id: int, name: str) -> list[ModelVersionRow]:
    query = (
        sa.select(ModelVersionRow)
        .join(ModelRow, ModelRow.id == ModelVersionRow.model_id)
        .where(ModelRow.owner_id == owner_id, ModelRow.name == name)
        .order_by(ModelVersionRow.version)
    )
    return list(s.scalars(query))


def create_dataset(
    s: Session,
    owner_id: int,
    name: str,
    *,
    artifact_ref: str,
    rows: int,
    columns: Sequence[str],
    size_bytes: int,
    label_column: str | None = None,
) -> DatasetRow:
    """Record an uploaded data set whose bytes are already in the artifact store at ``artifact_ref``."""
    if label_column is not None and label_column not in columns:
        raise DataError(f"label column {label_column!r} is not one of the columns {list(columns)}")
    row = DatasetRow(
        id=uuid.uuid4().hex,
        owner_id=owner_id,
        name=name,
        artifact_ref=artifact_ref,
        sha256=digest_of(artifact_ref),
        rows=rows,
        columns=list(columns),
        label_column=label_column,
        size_bytes=size_bytes,
    )
    with atomic(s, f"cannot record data set {name!r}"):
        s.add(row)
        s.flush()
    return row


def get_dataset(s: Session, dataset_id: str, *, owner_id: int) -> DatasetRow | None:
    return s.scalar(sa.select(DatasetRow).where(DatasetRow.id == dataset_id, DatasetRow.owner_id == owner_id))


def list_datasets(s: Session, owner_id: int) -> list[DatasetRow]:
    query = sa.select(DatasetRow).where(DatasetRow.owner_id == owner_id)
    return list(s.scalars(query.order_by(DatasetRow.created_at.desc(), DatasetRow.id)))
