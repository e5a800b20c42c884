"""A reported session's final model, uploaded by its command-line coordinator.

    POST /sessions/reported/model    multipart: session_id, digest (sha256 hex), file (safetensors)

``fedhive coordinator --report-to URL`` sends it once the server holds the session COMPLETED
(``tracking.platform_report``), authenticated as the reporting user. The file is checked before
anything is stored: within ``max_upload_bytes`` (413), its sha256 equal to ``digest`` (422: cut
short or altered on the way), safetensors with finite weights, never pickle (422). The session must
be the caller's (404, as for a missing one), a reported one, COMPLETED and without a model yet (409):
so the upload can neither replace a model nor land on a platform session. It then becomes the
session's final model as a platform session's does (``service.reported_sessions.attach_model``).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from fedhive.api.datasets import read_upload
from fedhive.api.deps import ServicesDep, SettingsDep, UserDep, load_user
from fedhive.api.schemas import ID_PATTERN, ModelVersionOut
from fedhive.core.codec import decode
from fedhive.errors import PayloadError
from fedhive.service import reported_sessions as reported
from fedhive.storage.models import ModelVersionRow

PATH = "/sessions/reported/model"  # fixed (no id in it): the body limit of uploads applies to it
SHA256 = r"^[0-9a-f]{64}$"


async def upload_reported_model(
    services: ServicesDep,
    settings: SettingsDep,
    user: UserDep,
    session_id: Annotated[str, Form(pattern=ID_PATTERN, description="the reported session")],
    digest: Annotated[str, Form(pattern=SHA256, description="sha256 (hex) of the file")],
    file: Annotated[UploadFile, File(description="the session's final model, a safetensors file")],
) -> ModelVersionOut:
    limit = settings.max_upload_bytes

    def store() -> ModelVersionOut:
        data = read_upload(file, limit, "the model file")
        actual = hashlib.sha256(data).hexdigest()
        if actual != digest:
            raise HTTPException(422, f"the model file's sha256 is {actual[:12]}..., not the digest sent")
        params = decode(data, max_bytes=limit, what="model file")  # PayloadError: 422
        if len(params) == 0:
            raise PayloadError("model file holds no tensors")
        ref = services.artifacts.put(data)
        with services.db.session() as s:
            load_user(s, user)
            try:
                version_id = reported.attach_model(
                    s, user.user_id, session_id, artifact_ref=ref, tensors=params.spec.to_json()
                )
            except reported.ReportRefused as exc:
                raise HTTPException(exc.status, str(exc)) from None
            row = s.get(ModelVersionRow, version_id)
            assert row is not None
            return ModelVersionOut.from_row(f"session-{session_id}", row)

    return await asyncio.to_thread(store)


def routes() -> APIRouter:
    r = APIRouter(tags=["sessions"])
    r.add_api_route(
        PATH,
        upload_reported_model,
        methods=["POST"],
        status_code=201,
        response_model=ModelVersionOut,
        summary="Upload a completed reported session's final model (safetensors, its sha256 checked)",
        responses={
            404: {"description": "no such session (or not yours)"},
            409: {"description": "a platform session, not COMPLETED, or it already has its model"},
            413: {"description": "over the upload limit"},
            422: {"description": "not safetensors, non-finite weights, or not the digest sent"},
        },
    )
    return r
