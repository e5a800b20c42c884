"""``GET /sites``: every registered node as a site, for the dashboard's sites page.

What ``GET /peers`` shows (status, last heartbeat, progress) plus what a site agent announced
about itself: its fedhive version, its installed apps (name and the first digits of the code's
digest) and the names of its data sets (``service.sites``). A node that never announced (a
one-session client, a platform's local peer) has none of these. Every signed-in user sees every
site, as with peers: choosing which sites can run a session's app on which data is what a user
needs them for. No secret, and no session a site is held by, is shown. ``role`` tells a site (an
agent, claimed for sessions) from a remote combiner (``fedhive combiner --agent``), which a
hierarchical session may use instead of combiners the server starts.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import Field

from fedhive.api.deps import ServicesDep, UserDep
from fedhive.api.schemas import PeerOut
from fedhive.storage import users_repo
from fedhive.storage.models import ClientRow, ClientStatus


class SiteOut(PeerOut):
    role: str = Field(description="site, or combiner (a remote combiner for hierarchical sessions)")
    agent: str | None = Field(description="the site agent's fedhive version; None: not an agent")
    apps: dict[str, str] = Field(description="installed app -> the first digits of its code's sha256")
    datasets: list[str] = Field(description="the data sets the site announced, by name")

    @classmethod
    def from_site_row(cls, row: ClientRow) -> SiteOut:
        site = row.site or {}
        apps = site.get("apps")
        datasets = site.get("datasets")
        agent = site.get("agent")
        return cls(
            **PeerOut.from_row(row).model_dump(),
            role=row.role or "site",
            agent=agent if isinstance(agent, str) else None,
            apps={str(k): str(v) for k, v in apps.items()} if isinstance(apps, dict) else {},
            datasets=[str(d) for d in datasets] if isinstance(datasets, list) else [],
        )


async def list_sites(
    services: ServicesDep,
    user: UserDep,
    status: Annotated[ClientStatus | None, Query(description="only sites in this status")] = None,
) -> list[SiteOut]:
    def read() -> list[SiteOut]:
        with services.db.session(read_only=True) as s:
            return [SiteOut.from_site_row(row) for row in users_repo.list_clients(s, None, status=status)]

    return await asyncio.to_thread(read)


def routes() -> APIRouter:
    r = APIRouter(prefix="/sites", tags=["sites"])
    r.add_api_route(
        "",
        list_sites,
        methods=["GET"],
        summary="Every site: status, last heartbeat, and what its agent announced (version, apps, data sets)",
    )
    return r
