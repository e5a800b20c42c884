"""``POST /sessions/start``: validate everything, store the upload, then hand over to the launcher.

The order is chosen so that a failure leaves nothing half made:
1. the form itself (FastAPI), then the account (404 if it was deleted after the token was issued)
   and a registered model if one is named (404 if it is not the user's), or a registered MLflow
   model (``mlflow_model=NAME/VERSION``, read from the platform's MLflow store: 404 if unknown,
   422 on a use-case mismatch, 503 if the tracking server does not answer in time);
2. the model spec, the strategy and the hyperparameters (422, nothing stored yet);
3. the CSV: size (413), parse (422 naming row and column), fit to the model (422); then its
   bytes go to the artifact store (content-addressed) and a ``datasets`` row is written;
4. ``launcher.start``, which creates the session row and claims the peers in one transaction,
   or raises ``NotEnoughPeers`` (400) leaving no session behind. A data set stored in step 3
   stays: it is the user's, listed, and reusable by ``dataset_id`` (see ``api.datasets``).

``app`` names one of the installed apps (``GET /apps``; default ``builtin``, fedhive's model zoo)
and ``run_config`` is a JSON object of scalar values handed to the app as its ``config`` (over
the app's own defaults). A data set, a model spec or a registered model feed the builtin app
only: any other app reads its own data at each site (422). ``initial_model`` (``models:/NAME/VERSION``
or ``s3://BUCKET/KEY`` in the server's own bucket, never a server path: see ``api.initial_model``)
starts a session of any app from those weights; weights that do not fit the session's model are
422, naming the first tensor that differs.

``topology`` is ``star`` (default: a coordinator over the sites), ``hierarchical`` (``combiners``
combiners that the server starts, default 2, each with a share of the sites) or ``decentralised``
(the sites train among themselves as peers; the server only watches). ``combiners`` is for a
hierarchical session only, and at most ``min_peers``; anything else is 422 with one line. Instead
of a number it may be ``remote`` (every ONLINE remote combiner, ``fedhive combiner --agent``) or
their ids, comma-separated (each must be an ONLINE combiner): the server then starts none.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from fedhive.api.datasets import owned_dataset, store_csv
from fedhive.api.deps import Principal, ServicesDep, SettingsDep, UserDep, load_user
from fedhive.api.form_limits import form_limited
from fedhive.api.initial_model import FORMS, load_from_bucket
from fedhive.api.schemas import ID_PATTERN, MAX_INT, NAME_PATTERN, SessionOut, clean_text
from fedhive.api.sessions import read_session
from fedhive.app.loader import BUILTIN
from fedhive.core.params import Params
from fedhive.learning.models import parse_model_spec
from fedhive.runtime.hub import HIERARCHICAL, STAR, TOPOLOGIES
from fedhive.runtime.session_config import SessionConfig, make_config
from fedhive.runtime.site_app import session_with_app
from fedhive.service.launcher import SessionRequest
from fedhive.service.services import Services
from fedhive.service.settings import Settings
from fedhive.storage import models_repo
from fedhive.strategies.registry import parse_strategy
from fedhive.tracking.mlflow_model import MlflowMissing
from fedhive.tracking.mlflow_registry import (
    RegisteredModel,
    TrackingUnavailable,
    load_registered_model,
    parse_model_ref,
)
from fedhive.tracking.mlflow_store import start_tags

_DEFAULT_MODEL = SessionConfig.model_fields["model"].default
DEFAULT_COMBINERS = 2


REMOTE = "remote"
_MAX_COMBINERS = 64
_COMBINERS_HINT = "combiners: a number, 'remote', or remote combiners' ids separated by commas"


def parse_topology(topology: str, combiners: str | None, min_peers: int) -> tuple[str, int]:
    """(topology, number of combiners to start) from the form (422 with one line otherwise);
    remote combiners are ``parse_remote_combiners``'s."""
    topology = topology.strip().lower()
    if topology not in TOPOLOGIES:
        raise HTTPException(422, f"topology: must be one of {', '.join(TOPOLOGIES)}")
    if topology != HIERARCHICAL:
        if combiners is not None:
            raise HTTPException(422, "combiners: only a hierarchical session has combiners")
        return topology, 0
    if parse_remote_combiners(combiners) is not None:
        return topology, 0
    try:
        count = DEFAULT_COMBINERS if combiners is None else int(combiners)
    except ValueError:
        raise HTTPException(422, _COMBINERS_HINT) from None
    if not 1 <= count <= _MAX_COMBINERS:
        raise HTTPException(422, f"combiners: from 1 to {_MAX_COMBINERS}")
    if count > min_peers:
        raise HTTPException(422, f"combiners: {count} combiners need min_peers of at least {count}")
    return topology, count


def parse_remote_combiners(combiners: str | None) -> tuple[str, ...] | None:
    """``remote`` -> () (every ONLINE one), ``a,b`` -> those ids; None for a number or nothing."""
    text = (combiners or "").strip()
    if not text or text.isdigit() or text.startswith("-"):
        return None
    if text.lower() == REMOTE:
        return ()
    ids = tuple(dict.fromkeys(c.strip() for c in text.split(",") if c.strip()))
    if not ids or len(ids) > _MAX_COMBINERS or not all(re.fullmatch(ID_PATTERN, c) for c in ids):
        raise HTTPException(422, _COMBINERS_HINT)
    return ids


_RUN_CONFIG_HINT = 'run_config: must be a JSON object of numbers, strings and booleans, e.g. {"local_epochs": 2}'


def parse_run_config(text: str | None) -> dict[str, Any]:
    """The run config a form field holds: a JSON object of scalars (422 otherwise)."""
    if text is None or not text.strip():
        return {}

    def no_constant(name: str) -> Any:  # NaN, Infinity: not JSON, and not a setting
        raise ValueError(name)

    try:
        value = json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError):
        raise HTTPException(422, _RUN_CONFIG_HINT) from None
    if not isinstance(value, dict):
        raise HTTPException(422, _RUN_CONFIG_HINT)
    for key, item in value.items():
        if isinstance(item, float) and not math.isfinite(item):
            raise HTTPException(422, _RUN_CONFIG_HINT)
        if not isinstance(item, str | int | float | bool):
            raise HTTPException(422, f"run_config: {key[:64]!r} is not a number, a string or a boolean")
        if not _storable(key, key=True) or (isinstance(item, str) and not _storable(item, key=False)):
            raise HTTPException(422, "run_config: keys and values must be UTF-8 text without control characters")
    return value


def _storable(text: str, *, key: bool) -> bool:
    """Text every database stores (no NUL, no lone surrogates); a key has no control characters at all."""
    try:
        clean_text(text) if key else text.encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return False
    return "\x00" not in text


# The form fields that feed the builtin app (the platform's data plan and the model zoo).
_BUILTIN_ONLY = ("dataset", "label", "dataset_id", "model", "model_name", "model_version", "mlflow_model")


def _session_name(name: str | None) -> str | None:
    """The name given, trimmed, as every database stores it (422 otherwise); None if blank."""
    if name is None or not name.strip():
        return None
    try:
        return clean_text(name.strip())
    except ValueError as exc:
        raise HTTPException(422, f"name: {exc}") from None


def resolve_model(
    services: Services, user: Principal, model: str | None, name: str | None, version: int | None
) -> tuple[str, tuple[str, int] | None]:
    """Blocking. (model spec text, registered (name, version) to start from, if any)."""
    with services.db.session(read_only=True) as s:
        load_user(s, user)
        if name is None:
            return model or _DEFAULT_MODEL, None
        row = models_repo.get_model_version(s, user.user_id, name, version)
        if row is None:
            which = f"version {version}" if version is not None else "any version"
            raise HTTPException(404, f"no model {name!r} with {which}")
        return row.model_spec, (name, row.version)


def load_mlflow_model(settings: Settings, model: str, use_case: str | None) -> RegisteredModel:
    """Blocking. The registered MLflow version to start from, mapped to HTTP answers."""
    ref = parse_model_ref(model)  # ConfigError: 422 naming the NAME/VERSION form
    try:
        return load_registered_model(settings.mlflow_uri(), ref, use_case=use_case)
    except MlflowMissing:
        raise HTTPException(501, "this server has no MLflow support: pip install 'fedhive[mlflow]'") from None
    except TrackingUnavailable:
        # the detail names no host: the URL is the operator's business, logged by the caller
        raise HTTPException(503, "the MLflow tracking server is unreachable; try again later") from None


def initial_weights(services: Services, settings: Settings, ref: str) -> tuple[str, Params, dict[str, str]]:
    """Blocking. The weights ``initial_model`` names, with what to call them in messages and the
    tracking tags that link the session to them (a registered MLflow version's)."""
    if ref.startswith("models:/"):
        loaded = load_mlflow_model(settings, ref.removeprefix("models:/"), None)
        return f"initial model {ref}", loaded.params, start_tags(loaded)
    return f"initial model {ref}", load_from_bucket(services, ref), {}


async def start_session(
    services: ServicesDep,
    settings: SettingsDep,
    user: UserDep,
    dataset: Annotated[UploadFile | None, File(description="a CSV file with a header row")] = None,
    label: Annotated[str | None, Form(min_length=1, max_length=255, description="the CSV's label column")] = None,
    dataset_id: Annotated[
        str | None, Form(pattern=ID_PATTERN, description="a data set uploaded before, instead of a file")
    ] = None,
    model: Annotated[
        str | None, Form(max_length=255, description="simple-dnn[:H1,H2,...], logreg, logreg-np or cnn")
    ] = None,
    model_name: Annotated[
        str | None, Form(pattern=NAME_PATTERN, description="a registered model to start from")
    ] = None,
    model_version: Annotated[int | None, Form(ge=1, le=MAX_INT, description="default: the newest")] = None,
    mlflow_model: Annotated[
        str | None, Form(max_length=300, description="a registered MLflow model to start from: NAME/VERSION")
    ] = None,
    mlflow_use_case: Annotated[
        str | None, Form(min_length=1, max_length=255, description="the use case the MLflow model must be tagged with")
    ] = None,
    initial_model: Annotated[
        str | None, Form(min_length=1, max_length=1024, description=f"weights to start from, any app: {FORMS}")
    ] = None,
    strategy: Annotated[
        str | None,
        Form(
            min_length=1,
            max_length=255,
            description="e.g. fedavg, fedprox:mu=0.01; default fedavg, or a Flower app's ServerApp strategy",
        ),
    ] = None,
    compression: Annotated[str, Form(max_length=32, description="none, float16, int8 or topk:F")] = "none",
    rounds: Annotated[int | None, Form(ge=1, le=100_000)] = None,
    epochs: Annotated[int | None, Form(ge=1, le=10_000)] = None,
    batch_size: Annotated[int | None, Form(ge=1, le=1_000_000)] = None,
    lr: Annotated[float | None, Form(gt=0, le=1_000, allow_inf_nan=False, description="learning rate")] = None,
    min_peers: Annotated[int, Form(ge=1, le=100_000, description="ONLINE peers needed to start")] = 2,
    key_metric: Annotated[
        str | None, Form(min_length=1, max_length=64, description="the metric that picks the best round's model")
    ] = None,
    mode: Annotated[Literal["min", "max"] | None, Form(description="best is the key metric's min or max")] = None,
    patience: Annotated[
        int | None, Form(ge=1, le=100_000, description="stop after this many rounds without a new best")
    ] = None,
    app: Annotated[str, Form(min_length=1, max_length=200, description="an installed app (GET /apps)")] = BUILTIN,
    name: Annotated[
        str | None, Form(min_length=1, max_length=100, description="a name for the session, shown in lists")
    ] = None,
    run_config: Annotated[
        str | None,
        Form(max_length=16_384, description='the app\'s settings: a JSON object of scalars, e.g. {"local_epochs": 2}'),
    ] = None,
    topology: Annotated[
        str, Form(max_length=32, description="star, hierarchical (combiners the server starts) or decentralised")
    ] = STAR,
    combiners: Annotated[
        str | None,
        Form(
            max_length=4_500,
            description=f"hierarchical: combiners to start (default {DEFAULT_COMBINERS}), or 'remote' (every "
            "ONLINE remote combiner), or remote combiners' ids separated by commas",
        ),
    ] = None,
) -> SessionOut:
    loaded_app = services.apps.named(app)  # ConfigError: 422 naming the installed apps
    flower = services.apps.flower(loaded_app.name)
    if flower is not None:  # what its ServerApp would run, under what the request says (docs/flower.md)
        rounds = rounds if rounds is not None else flower.num_rounds
        strategy = strategy if strategy is not None else flower.strategy.spec
    strategy = strategy if strategy is not None else "fedavg"
    settings_for_app = parse_run_config(run_config)
    if loaded_app.name != BUILTIN:
        given = {
            "dataset": dataset,
            "label": label,
            "dataset_id": dataset_id,
            "model": model,
            "model_name": model_name,
            "model_version": model_version,
            "mlflow_model": mlflow_model,
        }
        field = next((f for f in _BUILTIN_ONLY if given[f] is not None), None)
        if field is not None:
            raise HTTPException(
                422, f"{field}: feeds the builtin app only; app {app!r} reads its own data at each site"
            )
    if dataset is not None and dataset_id is not None:
        raise HTTPException(422, "dataset: upload a file or name a dataset_id, not both")
    if (dataset is None) != (label is None):
        raise HTTPException(422, "label: an uploaded dataset needs its label column named, and only then")
    if model is not None and model_name is not None:
        raise HTTPException(422, "model: give a model spec or a registered model_name, not both")
    if model_version is not None and model_name is None:
        raise HTTPException(422, "model_version: needs model_name")
    if mlflow_model is not None and (model is not None or model_name is not None):
        raise HTTPException(422, "mlflow_model: give a model spec, a model_name or an mlflow_model, only one")
    if mlflow_use_case is not None and mlflow_model is None:
        raise HTTPException(422, "mlflow_use_case: needs mlflow_model")
    if initial_model is not None and (model_name is not None or mlflow_model is not None):
        raise HTTPException(422, "initial_model: give a model_name, an mlflow_model or an initial_model, only one")

    topology, count = parse_topology(topology, combiners, min_peers)
    remote = parse_remote_combiners(combiners) if topology == HIERARCHICAL else None
    session_name = _session_name(name)
    spec_text, registered = await asyncio.to_thread(resolve_model, services, user, model, model_name, model_version)
    initial_params = None
    tags: dict[str, str] = {}  # for the session's MLflow runs: where it started from
    if mlflow_model is not None:
        loaded = await asyncio.to_thread(load_mlflow_model, settings, mlflow_model, mlflow_use_case)
        spec_text, initial_params = loaded.model_spec, (f"MLflow model {loaded.ref}", loaded.params)
        tags = start_tags(loaded, mlflow_use_case)
    if initial_model is not None:  # checked against the session's model by the launcher (422 naming the tensor)
        source, weights, tags = await asyncio.to_thread(initial_weights, services, settings, initial_model.strip())
        initial_params = (source, weights)
    spec = parse_model_spec(spec_text)  # ConfigError: 422 naming the valid forms
    parse_strategy(strategy)
    config = make_config(
        rounds=rounds,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        model=str(spec),
        strategy=strategy.strip(),
        compression=compression,
        min_clients=min_peers,
        run_config=settings_for_app,
        key_metric=key_metric,
        mode=mode,
        patience=patience,
    )
    config = session_with_app(config, loaded_app)

    if dataset is not None and label is not None:
        limit = settings.max_upload_bytes
        stored = await asyncio.to_thread(store_csv, services, user.user_id, dataset, label, spec, limit=limit)
        dataset_id = stored.id
    elif dataset_id is not None:
        await asyncio.to_thread(owned_dataset, services, user.user_id, dataset_id, spec)

    request = SessionRequest(
        owner_id=str(user.user_id),
        config=config,
        min_peers=min_peers,
        dataset_id=dataset_id,
        initial_model=registered,
        initial_params=initial_params,
        name=session_name,
        tags=tags,
        topology=topology,
        combiners=count,
        remote_combiners=remote,
    )
    session_id = await services.launcher.start(request)
    return await asyncio.to_thread(read_session, services, session_id, user.user_id)


def routes() -> APIRouter:
    r = APIRouter(prefix="/sessions", tags=["sessions"])
    r.add_api_route(
        "/start",
        start_session,
        methods=["POST"],
        status_code=201,
        summary="Start training: optional CSV upload, model, strategy, hyperparameters, min_peers",
        responses={
            400: {"description": "not enough peers ONLINE"},
            404: {
                "description": "the user, the registered model (fedhive or MLflow), the initial_model object or the "
                "data set does not exist"
            },
            501: {"description": "an MLflow model was named but MLflow is not installed on the server"},
            503: {"description": "the MLflow tracking server or the artifact store is unreachable"},
            413: {"description": "the upload is over the size limit"},
            422: {
                "description": "malformed CSV (row and column named), unknown model, strategy or app, a "
                "malformed run_config, data or a model spec given for an app other than builtin, or an "
                "initial_model that is not models:/ or s3:// in this server's bucket, or that does not fit "
                "the session's model (the tensor named), an unknown topology, or combiners given for another "
                "topology or more than min_peers"
            },
        },
        route_class_override=form_limited(max_files=1, max_fields=32),
    )
    return r
