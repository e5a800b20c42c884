"""A user's model registry: upload a seed model, list models and versions, download one.

A model file is safetensors (named tensors, no code execution; never pickle) and is decoded with
``core.codec.decode`` before anything is stored: a malformed header, sizes that do not add up or
NaN/Inf weights answer 422 and leave nothing behind. Each upload becomes the next version of the
named model (created on first upload). Another user's model answers 404 like a missing one.

Downloads: the artifact store reads whole objects (``ArtifactStore.get`` returns bytes, already
verified against their sha256 by the S3 store), so the answer is sent from memory with its
length and an ETag naming the digest; the store would need a streaming read to do better.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Path, Response, UploadFile

from fedhive.api.datasets import read_upload
from fedhive.api.deps import ServicesDep, SettingsDep, UserDep, load_user
from fedhive.api.form_limits import form_limited
from fedhive.api.schemas import MAX_INT, NAME_PATTERN, ModelOut, ModelVersionOut
from fedhive.core.codec import decode
from fedhive.errors import PayloadError
from fedhive.learning.models import parse_model_spec
from fedhive.storage import models_repo

ModelName = Annotated[str, Path(pattern=NAME_PATTERN, description="the model's name")]
Version = Annotated[int, Path(ge=1, le=MAX_INT)]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such model or version (or not yours)"}}


async def upload_model(
    services: ServicesDep,
    settings: SettingsDep,
    user: UserDep,
    file: Annotated[UploadFile, File(description="the parameters as a safetensors file")],
    name: Annotated[str, Form(pattern=NAME_PATTERN, description="registry name; a new version if it exists")],
    model_spec: Annotated[str, Form(max_length=255, description="what builds the model, e.g. simple-dnn:128,64")],
) -> ModelVersionOut:
    spec = parse_model_spec(model_spec)  # ConfigError: 422
    limit = settings.max_upload_bytes

    def store() -> ModelVersionOut:
        data = read_upload(file, limit, "the model file")
        params = decode(data, max_bytes=limit, what="model file")  # PayloadError: 422
        if len(params) == 0:
            raise PayloadError("model file holds no tensors")
        tensors = {t.name: {"shape": list(t.shape), "dtype": t.dtype} for t in params.spec.tensors}
        ref = services.artifacts.put(data)
        with services.db.session() as s:
            load_user(s, user)
            row = models_repo.add_model_version(
                s, user.user_id, name, artifact_ref=ref, spec=tensors, model_spec=str(spec), create=True
            )
            return ModelVersionOut.from_row(name, row)

    return await asyncio.to_thread(store)


async def list_models(services: ServicesDep, user: UserDep) -> list[ModelOut]:
    def read() -> list[ModelOut]:
        with services.db.session(read_only=True) as s:
            return [ModelOut.from_row(row) for row in models_repo.list_models(s, user.user_id)]

    return await asyncio.to_thread(read)


async def list_versions(services: ServicesDep, user: UserDep, name: ModelName) -> list[ModelVersionOut]:
    def read() -> list[ModelVersionOut]:
        with services.db.session(read_only=True) as s:
            if models_repo.get_model(s, user.user_id, name) is None:
                raise HTTPException(404, f"no model {name!r}")
            return [ModelVersionOut.from_row(name, v) for v in models_repo.list_model_versions(s, user.user_id, name)]

    return await asyncio.to_thread(read)


def _version(services: ServicesDep, user: UserDep, name: str, version: int) -> ModelVersionOut:
    with services.db.session(read_only=True) as s:
        row = models_repo.get_model_version(s, user.user_id, name, version)
        if row is None:
            raise HTTPException(404, f"no model {name!r} version {version}")
        return ModelVersionOut.from_row(name, row)


async def get_version(services: ServicesDep, user: UserDep, name: ModelName, version: Version) -> ModelVersionOut:
    return await asyncio.to_thread(_version, services, user, name, version)


async def download_version(services: ServicesDep, user: UserDep, name: ModelName, version: Version) -> Response:
    def read() -> tuple[str, bytes]:
        found = _version(services, user, name, version)
        ref = f"sha256:{found.sha256}"
        return ref, services.artifacts.get(ref)

    ref, data = await asyncio.to_thread(read)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}-v{version}.safetensors"', "ETag": f'"{ref}"'},
    )


def routes() -> APIRouter:
    r = APIRouter(prefix="/models", tags=["models"])
    r.add_api_route(
        "",
        upload_model,
        methods=["POST"],
        status_code=201,
        summary="Upload a seed model (safetensors) as the next version of a named model",
        responses={413: {"description": "over the size limit"}, 422: {"description": "not valid safetensors"}},
        route_class_override=form_limited(max_files=1, max_fields=8),
    )
    r.add_api_route("", list_models, methods=["GET"], summary="Your models")
    r.add_api_route(
        "/{name}/versions", list_versions, methods=["GET"], summary="A model's versions", responses=_NOT_FOUND
    )
    r.add_api_route(
        "/{name}/versions/{version}", get_version, methods=["GET"], summary="One version", responses=_NOT_FOUND
    )
    r.add_api_route(
        "/{name}/versions/{version}/download",
        download_version,
        methods=["GET"],
        response_class=Response,
        summary="The version's safetensors bytes",
        responses={200: {"content": {"application/octet-stream": {}}}, **_NOT_FOUND},
    )
    return r
