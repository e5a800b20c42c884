"""A session's limits on each update, as a node that collects updates applies them.

Joins the session's settings (``examples_cap_factor``, ``max_examples_per_client``,
``max_update_norm``, ``max_model_jump``) to what the node knows of each participant (the example
count it registered with) for the pure checks of ``strategies.screening``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fedhive.core.params import Params
from fedhive.runtime.registry import ClientRegistry
from fedhive.runtime.session_config import SessionConfig
from fedhive.strategies.screening import UpdateScreen, capped_examples

log = logging.getLogger("fedhive.coordinator")  # the node that runs rounds


@dataclass(frozen=True)
class UpdateLimits:
    config: SessionConfig
    registry: ClientRegistry

    def screen(self, base: Params) -> UpdateScreen:
        """The screen of a round whose global model is ``base``."""
        c = self.config
        return UpdateScreen(base, max_update_norm=c.max_update_norm, max_model_jump=c.max_model_jump)

    def weight(self, client: str, reported: int, round: int) -> int:
        """The example count ``client``'s update is weighed with: what it reported, capped by the
        count it registered with and the session's ceiling (a capped count is logged)."""
        info = self.registry.get(client)
        registered = info.num_examples if info is not None else 0
        c = self.config
        weight = capped_examples(reported, registered, factor=c.examples_cap_factor, ceiling=c.max_examples_per_client)
        if weight < reported:
            log.warning(
                "round %d: %s reported %d examples, registered with %d: weighed as %d",
                round,
                client,
                reported,
                registered,
                weight,
            )
        return weight
