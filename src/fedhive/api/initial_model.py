"""``initial_model`` of ``POST /sessions/start``: weights a session starts from, named by a remote user.

Two forms, the ``fedhive --initial-model`` ones that name nothing on the server's disk:

- ``models:/NAME/VERSION``: a registered version in the server's MLflow registry (fedhive's
  safetensors file only; no pickled flavour is ever loaded);
- ``s3://BUCKET/KEY``: an object in the server's own S3 artifact bucket (where FEDn's users seed a
  model), read with the server's credentials. Objects of other buckets, fedhive's own
  content-addressed artifacts (any ``sha256/`` area: other users' models and data sets) and any
  ``?endpoint=`` of the user's choosing are refused.

A file path is always refused: the server would read its own files on a remote user's behalf.
``models:/`` is read by ``api.session_start`` (with the MLflow errors it maps); the bucket here.
The weights are decoded by fedhive's codec; whether they fit the session's model is checked
where that model is known (the session manager), naming the first tensor that differs (422).
"""

from __future__ import annotations

import logging
from urllib.parse import unquote, urlsplit

from fastapi import HTTPException

from fedhive.core import codec
from fedhive.core.params import Params
from fedhive.errors import PayloadError, StorageError
from fedhive.service.services import Services

log = logging.getLogger("fedhive.api")
MAX_BYTES = 1 << 33
FORMS = "models:/NAME/VERSION (the server's MLflow registry) or s3://BUCKET/KEY (the server's artifact bucket)"


def load_from_bucket(services: Services, ref: str) -> Params:
    """Blocking. The weights of ``s3://BUCKET/KEY`` in the server's artifact bucket, decoded; an
    ``HTTPException`` for anything else (a path above all)."""
    if not ref.startswith("s3://"):
        raise HTTPException(422, f"initial_model: expected {FORMS}; a path on the server is never read")
    return _from_bucket(services, ref)


def _from_bucket(services: Services, ref: str) -> Params:
    parts = urlsplit(ref)
    key = unquote(parts.path).lstrip("/")
    if parts.query or parts.fragment or "@" in parts.netloc or not parts.netloc or not key:
        raise HTTPException(422, "initial_model: expected s3://BUCKET/KEY, without credentials or options")
    from fedhive.storage.s3_artifacts import S3ArtifactStore  # boto3 loads only when S3 is used

    store = services.artifacts
    if not isinstance(store, S3ArtifactStore):
        raise HTTPException(422, "initial_model: this server keeps its artifacts on disk, not in S3; use models:/")
    if parts.netloc != store.bucket:
        raise HTTPException(422, "initial_model: only objects in this server's artifact bucket can be named")
    segments = key.split("/")
    if {".", ".."} & set(segments):
        raise HTTPException(422, "initial_model: a key with '.' or '..' segments is refused")
    if "sha256" in segments:
        raise HTTPException(422, "initial_model: fedhive's own artifacts cannot be named; use a key of your own")
    try:
        data = store.read_key(key, max_bytes=MAX_BYTES)
    except StorageError as exc:
        if str(exc).endswith("does not exist"):  # read_key's wording for a missing object
            raise HTTPException(404, f"initial_model: no object {ref}") from None
        log.warning("initial_model %s: %s", ref, exc)
        raise HTTPException(503, "initial_model: the artifact store did not answer; try again later") from None
    try:
        return codec.decode(data, max_bytes=MAX_BYTES, what=f"initial model {ref}")
    except PayloadError as exc:
        raise HTTPException(422, f"initial_model: {ref} is not a safetensors file fedhive can read: {exc}") from None
