"""Sessions a restarted server takes up again: the path ``SessionManager.resume_running`` takes.

A coordinator process that was killed and started again resumes every RUNNING (or PENDING)
session it ran: a star or hierarchical one from its last checkpoint with the peers it held, so no
round is skipped or run twice (a hierarchical one with its combiners started again under new ids:
``hierarchical_sessions``); a decentralised one is watched again (``PeerSession``, ``resumed``):
its peers never needed the server. A reported session runs elsewhere and is not resumed here
(``SessionRows.unfinished``). A session that cannot go on (its app gone or changed, its data plan
unreadable, a topology this server does not run) is marked FAILED with the reason, and the others
are resumed all the same.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from fedhive.app.loader import BUILTIN
from fedhive.core.params import Params
from fedhive.errors import FedhiveError
from fedhive.runtime.hub import DECENTRALISED, STAR
from fedhive.runtime.session_config import SessionConfig
from fedhive.service.apps import InstalledApps
from fedhive.service.persistence import load_checkpoint
from fedhive.service.running_sessions import RunningSessions
from fedhive.service.session_inputs import SessionInputs
from fedhive.service.session_rows import SessionRows
from fedhive.storage.artifacts import ArtifactStore
from fedhive.storage.database import Database

log = logging.getLogger("fedhive.sessions")


class SessionResumer:
    def __init__(
        self,
        db: Database,
        artifacts: ArtifactStore,
        apps: InstalledApps,
        rows: SessionRows,
        inputs: SessionInputs,
        runs: RunningSessions,
    ) -> None:
        self.db = db
        self.artifacts = artifacts
        self.apps = apps
        self.rows = rows
        self.inputs = inputs
        self.runs = runs

    async def resume_running(self) -> list[str]:
        """Continue every RUNNING (or PENDING) session from its last checkpoint; the ids resumed."""
        resumed = []
        for row_id, owner_id, raw in await asyncio.to_thread(self.rows.unfinished):
            topology = (raw.get("data") or {}).get("topology", STAR)
            if topology != STAR and self.runs.nodes is None:
                why = f"cannot resume: this server runs no {topology} sessions"
                await asyncio.to_thread(self.rows.fail, row_id, why)
                continue
            try:
                config = await asyncio.to_thread(self.resumable, SessionConfig.model_validate(raw))
                peers = await asyncio.to_thread(self.rows.peers_of, row_id)
                plan = await asyncio.to_thread(self.inputs.plan_again, config, peers)
                if topology == DECENTRALISED:  # the model is the peers' own: nothing to load
                    ckpt, initial = None, Params({})
                else:
                    ckpt = await asyncio.to_thread(load_checkpoint, self.db, self.artifacts, row_id)
                    initial = ckpt.params if ckpt else await asyncio.to_thread(self.inputs.fresh_params, config, plan)
            except (FedhiveError, ValidationError) as exc:
                await asyncio.to_thread(self.rows.fail, row_id, f"cannot resume: {exc}")
                continue
            if topology == DECENTRALISED:
                log.info("resuming decentralised session %s: asking its %d peers how far they are", row_id, len(peers))
            else:
                start_round = ckpt.next_round if ckpt else 1
                log.info("resuming session %s at round %d with %d peers", row_id, start_round, len(peers))
            self.runs.launch(config, peers, plan, initial, owner_id=owner_id, checkpoint=ckpt, resumed=True)
            resumed.append(row_id)
        return resumed

    def resumable(self, config: SessionConfig) -> SessionConfig:
        """The session's config to resume with: its app still installed with the same code. The
        builtin app is fedhive's own: a platform upgraded between the crash and the restart goes
        on with its new version (its local peers run that one too), named in the stored config.
        Blocking (it may store the config): run it in a thread."""
        builtin = self.apps.builtin
        if config.app == BUILTIN and config.app_digest and config.app_digest != builtin.digest:
            log.warning(
                "session %s: fedhive's builtin app changed since the session started (code %s, now %s)",
                config.session_id,
                config.app_digest[:12],
                builtin.short_digest,
            )
            config = config.model_copy(update={"app_digest": builtin.digest})
            self.rows.store_config(config)
        self.apps.for_session(config)  # still installed, and the same code (AppError otherwise)
        return config
