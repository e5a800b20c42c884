"""The messages between a coordinator and a ``ClientHost``: many virtual clients behind one node.

Why: in a simulation of 1000 clients, a TRAIN and an UPDATE message per client per round, each
dispatched, validated and folded on its own, cost about a third as much as training a small model.
A host trains its clients one after another, checks and folds their updates itself (as a combiner
does), and answers with one ``partial`` per chunk of clients. The coordinator keeps all per-client
bookkeeping (selection, accepted / failed, per-client events and metrics), so observers see the
same events either way.

- A hosted client registers as usual, with ``host`` in the REGISTER body: its own choice, so a node
  can only ever be made the host of clients that named it.
- TRAIN to a host: ``body.fit`` is the fit configuration of all its selected clients but for the
  seed, and ``body.clients`` lists ``{"client", "seed"}`` for each; the global model is the
  payload, once.
- The host's answer, a ``partial`` with ``mode`` ``sum`` (mergeable strategies) or ``raw`` (the
  updates themselves, for a median or Krum), or ``none`` when every client of the chunk failed:
  ``body.members`` gives each folded client's example count and metrics, ``body.failures`` each
  failed client's reason.

The bodies are ``core.bodies``' ``RegisterBody``, ``TrainBody`` and ``PartialBody``.

Nothing here depends on the transport, but only ``simulate`` runs hosts: over a broker each
hosted client's REGISTER would have to be signed with that client's own key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fedhive.app.learner import FitConfig
from fedhive.core.bodies import MAX_CLIENTS, Member, PartialBody, RegisterBody, TrainBody, parse_body
from fedhive.core.envelope import Message
from fedhive.core.params import ParamSpec
from fedhive.errors import ProtocolError
from fedhive.runtime.partials import read_partial
from fedhive.strategies.base import Aggregator, Partial


def train_items(body: TrainBody, round: int = 0) -> list[tuple[str, FitConfig]]:
    """(client, its fit configuration for ``round``) for each client a host's TRAIN names."""
    if not body.clients:
        raise ProtocolError(f"a host's TRAIN must list 1 to {MAX_CLIENTS} clients")
    try:
        base = dataclasses.replace(FitConfig.from_json(body.fit), round=round)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed fit configuration: {exc}") from None
    return [(client, base.with_seed(seed)) for client, seed in body.seeds()]


class HostDirectory:
    """The coordinator's record of which clients a ``ClientHost`` answers for."""

    def __init__(self) -> None:
        self._host_of: dict[str, str] = {}

    def note_registration(self, client_id: str, body: RegisterBody) -> None:
        host = body.host
        if host is None:
            self._host_of.pop(client_id, None)  # registered again on its own
        else:
            self._host_of[client_id] = host

    def host_of(self, client_id: str) -> str | None:
        return self._host_of.get(client_id)

    def split(self, clients: Sequence[str]) -> tuple[list[str], dict[str, list[str]]]:
        """(clients addressed directly, {host: its clients}), each in the given order."""
        direct: list[str] = []
        hosted: dict[str, list[str]] = {}
        for c in clients:
            host = self._host_of.get(c)
            if host is None:
                direct.append(c)
            else:
                hosted.setdefault(host, []).append(c)
        return direct, hosted

    def answer_of(self, msg: Message) -> tuple[list[Member], list[tuple[str, str]]]:
        """The members and failures a host's ``partial`` reports; ``ProtocolError`` if it names a
        client that did not register with the sender as its host."""
        body = parse_body(PartialBody, msg)
        members, failures = body.member_list(), body.failure_list()
        named = [m.client_id for m in members] + [c for c, _ in failures]
        if any(self._host_of.get(c) != msg.sender for c in named):
            raise ProtocolError(f"{msg.sender} is not the host of every client its partial names")
        return members, failures


def fold_members(
    aggregator: Aggregator, msg: Message, members: Sequence[Member], spec: ParamSpec, *, max_update_bytes: int
) -> None:
    """Check a host's partial (sums or raw updates) against what it says it holds, and fold it."""
    part = read_partial(msg, spec, max_bytes=max_update_bytes * max(1, min(len(members), 64)))
    if isinstance(part, Partial):
        if part.count != len(members):
            raise ProtocolError(f"partial sums {part.count} updates for {len(members)} members")
        if not aggregator.mergeable:
            raise ProtocolError("this session's strategy cannot merge partial sums; send raw updates")
        aggregator.merge(part)
        return
    if [u.client_id for u in part] != [m.client_id for m in members]:
        raise ProtocolError("the raw updates of a host's partial are not its members")
    for update in part:
        aggregator.add(update)
