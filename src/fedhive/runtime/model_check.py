"""A round's new global model, checked before anything applies or checkpoints it.

Updates are screened one by one as they are folded (``strategies.screening``), which already
keeps a weighted mean, a median or Krum from exploding. This is the check of the result itself:
the aggregate (the clients' combined model) and then the model the strategy makes of it (a server
optimiser's step) must be finite and within ``max_model_jump`` of the current global model. A
refused aggregate is the clients' doing: the round is tried again without the update that moved
it most. A refused step after a sound aggregate is the strategy's own arithmetic, and the session
cannot go on with it; either way the refused model never becomes the global model.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedhive.core.params import Params
from fedhive.runtime.round_state import RoundState
from fedhive.strategies.base import AggregateResult, Strategy
from fedhive.strategies.screening import UpdateScreen


@dataclass(frozen=True)
class Refused:
    reason: str
    retry: bool  # the aggregate was refused (an update's doing); False: the strategy's step was


def aggregate_checked(
    strategy: Strategy, global_params: Params, r: RoundState, screen: UpdateScreen | None
) -> tuple[Params, AggregateResult] | Refused:
    """The round's new global model and its aggregate, or why it is refused. Blocking: run it
    where aggregation runs."""
    aggregate = r.aggregator.result()
    # A strategy that takes the aggregate as it is (FedAvg and kin) gets one check of the model,
    # not two of the same arrays. Any other is checked before its step too: a server optimiser
    # must never fold an exploded aggregate into its state.
    as_is = type(strategy).apply is Strategy.apply
    if screen is not None and not as_is:
        why = screen.model_refusal(aggregate.params)
        if why is not None:
            return Refused(f"round {r.round}: the aggregate of {aggregate.count} updates is {why}", retry=True)
    params = strategy.apply(global_params, aggregate, r.round)
    if screen is not None:
        why = screen.model_refusal(params)
        if why is not None and as_is:
            return Refused(f"round {r.round}: the aggregate of {aggregate.count} updates is {why}", retry=True)
        if why is not None:
            return Refused(f"round {r.round}: the new global model from {strategy.name} is {why}", retry=False)
    return params, aggregate
