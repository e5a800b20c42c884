"""Uploaded data sets: bounded reads, CSV validation, content-addressed storage; ``GET /datasets``.

Size: the route's body limit (``api.body_limit``, enforced while the body streams in, before
any handler runs) caps what is received at ``max_upload_bytes`` plus the multipart overhead;
the multipart parser spools files to disk past 1 MiB rather than holding them in memory.
``read_upload`` then checks the file itself against ``max_upload_bytes`` exactly, and reads it
into memory (bounded by that limit): ``ArtifactStore.put`` takes bytes.

An upload is stored before the session starts and stays when the start fails (not enough
peers, say): its bytes are content-addressed, its row is listed by ``GET /datasets``, and a
retry can name it (``dataset_id``) instead of uploading it again. The same bytes with the same
label column uploaded twice by one user are one data set.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import re
import secrets
import tempfile
from pathlib import Path, PurePath
from typing import Annotated

from fastapi import APIRouter, HTTPException, UploadFile
from fastapi import Path as PathParam

from fedhive.api.deps import ServicesDep, UserDep
from fedhive.api.schemas import ID_PATTERN, DatasetOut
from fedhive.errors import DataError
from fedhive.learning.csv_data import load_csv
from fedhive.learning.models import ModelSpec
from fedhive.service.services import Services
from fedhive.storage import models_repo

DEFAULT_NAME = "upload.csv"
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
    """The uploaded file's bytes (blocking), 413 if over ``limit``; reads at most limit + 1."""
    too_large = HTTPException(413, f"{what} is over the limit of {limit} bytes")
    if upload.size is not None and upload.size > limit:
        raise too_large
    upload.file.seek(0)
    data = upload.file.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


def display_name(filename: str | None) -> str:
    """The upload's file name, safe to store and to show (no path, no control characters)."""
    name = _UNSAFE.sub("_", PurePath(filename or "").name)[:255].strip()
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return DEFAULT_NAME
    return name or DEFAULT_NAME


def validate_csv(data: bytes, name: str, label: str) -> tuple[int, list[str], int]:
    """Parse as training will; (rows, columns, feature count), or a ``DataError`` naming the row
    and the column. ``load_csv`` reads a path, so the bytes go to a temporary file first; its
    path is replaced by the upload's name in messages (a user has no use for our /tmp)."""
    with tempfile.TemporaryDirectory(prefix="fedhive-upload-") as tmp:
        # Our own file name, never the user's: "..", a reserved name or a long one cannot escape
        # or break the temporary directory.
        path = Path(tmp) / f"upload-{secrets.token_hex(8)}.csv"
        path.write_bytes(data)
        try:
            dataset = load_csv(path, label, max_bytes=len(data) + 1)
        except DataError as exc:
            raise DataError(str(exc).replace(str(path), name).replace(path.name, name)) from None
    # The header in file order; decoded lazily, so only its first chunk (load_csv accepted it).
    header = next(csv.reader(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")))
    return len(dataset), [cell.strip() for cell in header], dataset.num_features


def store_csv(
    services: Services, owner_id: int, upload: UploadFile, label: str, model: ModelSpec, *, limit: int
) -> DatasetOut:
    """Validate, store and register an uploaded CSV (blocking). 413, 422 or the data set."""
    data = read_upload(upload, limit, "the CSV file")
    name = display_name(upload.filename)
    rows, columns, num_features = validate_csv(data, name, label)
    model.check_fits(num_features)
    digest = hashlib.sha256(data).hexdigest()
    ref = services.artifacts.put(data, digest=digest)
    with services.db.session() as s:
        for row in models_repo.list_datasets(s, owner_id):
            if row.sha256 == digest and row.label_column == label:
                return DatasetOut.from_row(row)
        row = models_repo.create_dataset(
            s, owner_id, name, artifact_ref=ref, rows=rows, columns=columns, size_bytes=len(data), label_column=label
        )
        return DatasetOut.from_row(row)


def owned_dataset(services: Services, owner_id: int, dataset_id: str, model: ModelSpec | None = None) -> DatasetOut:
    """A data set of this user (blocking); 404 for anyone else's. With ``model``, 422 unless the
    model can read its rows."""
    with services.db.session(read_only=True) as s:
        row = models_repo.get_dataset(s, dataset_id, owner_id=owner_id)
        if row is None:
            raise HTTPException(404, f"no data set {dataset_id!r}")
        found = DatasetOut.from_row(row)
    if model is not None:
        model.check_fits(len(found.columns) - (1 if found.label_column else 0))
    return found


async def list_datasets(services: ServicesDep, user: UserDep) -> list[DatasetOut]:
    def read() -> list[DatasetOut]:
        with services.db.session(read_only=True) as s:
            return [DatasetOut.from_row(row) for row in models_repo.list_datasets(s, user.user_id)]

    return await asyncio.to_thread(read)


async def get_dataset(
    services: ServicesDep, user: UserDep, dataset_id: Annotated[str, PathParam(pattern=ID_PATTERN)]
) -> DatasetOut:
    return await asyncio.to_thread(owned_dataset, services, user.user_id, dataset_id)


def routes() -> APIRouter:
    r = APIRouter(prefix="/datasets", tags=["datasets"])
    r.add_api_route("", list_datasets, methods=["GET"], summary="Your uploaded data sets, newest first")
    r.add_api_route("/{dataset_id}", get_dataset, methods=["GET"], summary="One of your data sets", responses={404: {}})
    return r
