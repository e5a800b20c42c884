"""``GET /apps``: the apps a session may run on this platform (``fedhive serve --app``).

Every signed-in user sees them: choosing one is part of starting a session. Each is listed with
its name (what ``POST /sessions/start`` takes as ``app``), the first 12 hex digits of its code's
digest (what every site compares with its own install), the hooks it has and its default run
config. Where an app was loaded from (a path on the server) is not shown.
"""

from __future__ import annotations

from fastapi import APIRouter

from fedhive.api.deps import ServicesDep, UserDep
from fedhive.api.schemas import AppOut


async def list_apps(services: ServicesDep, user: UserDep) -> list[AppOut]:
    return [AppOut.from_loaded(loaded) for loaded in services.apps.values()]


def routes() -> APIRouter:
    r = APIRouter(prefix="/apps", tags=["apps"])
    r.add_api_route("", list_apps, methods=["GET"], summary="The installed apps: name, code digest, hooks, run config")
    return r
