"""The messages between a coordinator and a ``ClientHost``: many virtual clients behind one node.

Why: in a simulation of 1000 clients, a TRAIN and an UPDATE message per client per round, each
dispatched, validated and folded on its own, cost about a third as much as training a small model.
A host trains its clients one after another, checks and folds their updates itself (as a combiner
does), and answers with one ``partial`` per chunk of clients. The coordinator keeps all per-client
bookkeeping (selection, accepted / failed, per-client events and metrics), so observers see the
same events either way.

- A hosted client registers as usual, with ``host`` in the REGISTER body: its own choice, so a node
  can only ever be made the host of clients that named it.
- Liveness is per host: the host's own HEARTBEAT (signed by the host, ``hosting`` in its body)
  counts as a sign of life of every client that registered naming it, and of no other; the
  coordinator beats to the host once for all of them. A host's beat that the coordinator cannot
  match to any client (it restarted, and forgot them) is answered with a REGISTERED addressed to
  the host itself: the host then registers its clients again, each signed by its own key.
- TRAIN to a host: ``body.fit`` is the fit configuration of all its selected clients but for the
  seed, and ``body.clients`` lists ``{"client", "seed"}`` for each; the global model is the
  payload, once.
- The host's answer, a ``partial`` with ``mode`` ``sum`` (mergeable strategies) or ``raw`` (the
  updates themselves, for a median or Krum), or ``none`` when every client of the chunk failed:
  ``body.members`` gives each folded client's example count and metrics, ``body.failures`` each
  failed client's reason.

The bodies are ``core.bodies``' ``RegisterBody``, ``TrainBody`` and ``PartialBody``.

Nothing here depends on the transport: in ``simulate`` the host shares the coordinator's process;
over a broker (``fedhive client --virtual N --host ID``) each hosted client's REGISTER is signed
with that client's own key, and everything the host sends for all of them with the host's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from fedhive.app.learner import FitConfig
from fedhive.core.bodies import MAX_CLIENTS, Member, PartialBody, RegisterBody, TrainBody, parse_body
from fedhive.core.envelope import Kind, Message
from fedhive.core.params import ParamSpec
from fedhive.errors import ProtocolError
from fedhive.runtime.partials import read_partial
from fedhive.strategies.base import Aggregator, Partial

HOSTING = "hosting"  # in a host's own HEARTBEAT body: how many registered clients it beats for


def host_beat(msg: Message) -> bool:
    """A ``ClientHost``'s own heartbeat (for all its clients), not a client's."""
    return msg.kind is Kind.HEARTBEAT and isinstance(msg.envelope.body.get(HOSTING), int)


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
        self._clients_of: dict[str, set[str]] = {}  # host -> the clients that named it

    def note_registration(self, client_id: str, body: RegisterBody) -> None:
        host, before = body.host, self._host_of.get(client_id)
        if before is not None and before != host:
            self._clients_of[before].discard(client_id)
        if host is None:
            self._host_of.pop(client_id, None)  # registered again on its own
        else:
            self._host_of[client_id] = host
            self._clients_of.setdefault(host, set()).add(client_id)

    def host_of(self, client_id: str) -> str | None:
        return self._host_of.get(client_id)

    def clients_of(self, host: str) -> set[str]:
        """The clients whose own signed REGISTER named ``host``: all a host's heartbeat speaks for."""
        return self._clients_of.get(host, set())

    def beat_targets(self, participants: Sequence[str]) -> list[str]:
        """Whom the node's own heartbeat goes to: each direct participant, and each host once for
        its clients (a host hears the coordinator for all of them; 10,000 beats would be 10)."""
        targets: list[str] = []
        hosts: set[str] = set()
        for c in participants:
            host = self.host_of(c)
            if host is None:
                targets.append(c)
            elif host not in hosts:
                hosts.add(host)
                targets.append(host)
        return targets

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
