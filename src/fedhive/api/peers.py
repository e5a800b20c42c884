"""Peers (registered client nodes): ``GET /peers`` for every user, ``POST /peers`` for admins.

Peers are shared infrastructure: every signed-in user sees each peer's status, last heartbeat
and progress, since that is what decides whether a session can start. The listing never shows
secrets, nor which session holds a peer (that would name other users' sessions); a session's
own peers are in its training status.

``POST /peers`` registers a node and returns its signing secret once: the database keeps it to
verify signatures, but no route shows it again. Losing it means registering a new node.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query

from fedhive.api.deps import ServicesDep, UserDep, load_admin
from fedhive.api.schemas import PeerCreate, PeerCredential, PeerOut
from fedhive.storage import users_repo
from fedhive.storage.models import ClientStatus


async def list_peers(
    services: ServicesDep,
    user: UserDep,
    status: Annotated[ClientStatus | None, Query(description="only peers in this status")] = None,
) -> list[PeerOut]:
    def read() -> list[PeerOut]:
        with services.db.session(read_only=True) as s:
            return [PeerOut.from_row(row) for row in users_repo.list_clients(s, None, status=status)]

    return await asyncio.to_thread(read)


async def create_peer(body: PeerCreate, services: ServicesDep, user: UserDep) -> PeerCredential:
    def create() -> PeerCredential:
        with services.db.session() as s:
            admin = load_admin(s, user)
            client_id, secret = users_repo.create_client(
                s, body.name, box=services.settings.secret_box(), owner_id=admin.id, client_id=body.id
            )
        return PeerCredential(id=client_id, name=body.name, secret=secret)

    return await asyncio.to_thread(create)


def routes() -> APIRouter:
    r = APIRouter(prefix="/peers", tags=["peers"])
    r.add_api_route("", list_peers, methods=["GET"], summary="Every peer: status, last heartbeat, progress")
    r.add_api_route(
        "",
        create_peer,
        methods=["POST"],
        status_code=201,
        summary="Register a peer (admin): returns its id and signing secret, once",
        responses={403: {"description": "needs the admin role"}, 409: {"description": "the id is taken"}},
    )
    return r
