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

Nothing here depends on the transport, but only ``simulate`` runs hosts: over a broker each
hosted client's REGISTER would have to be signed with that client's own key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedhive.app.learner import FitConfig
from fedhive.core.envelope import Message
from fedhive.core.params import ParamSpec
from fedhive.errors import ProtocolError
from fedhive.runtime.partials import MAX_RAW_UPDATES, read_partial
from fedhive.runtime.payloads import body_int, body_metrics
from fedhive.strategies.base import Aggregator, Partial

MAX_EXAMPLES = 10**9
MAX_ID = 128
MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class Member:
    client_id: str
    num_examples: int
    metrics: dict[str, float]


def host_of(body: Mapping[str, object]) -> str | None:
    """The host a REGISTER names, if any."""
    host = body.get("host")
    if host is None:
        return None
    if not isinstance(host, str) or not 0 < len(host) <= MAX_ID:
        raise ProtocolError(f"body field 'host' must be a node id of 1 to {MAX_ID} characters")
    return host


def train_items(body: Mapping[str, object], round: int = 0) -> list[tuple[str, FitConfig]]:
    """(client, its fit configuration for ``round``) for each client a host's TRAIN names."""
    items, fit = body.get("clients"), body.get("fit")
    if not isinstance(items, list) or not 0 < len(items) <= MAX_RAW_UPDATES:
        raise ProtocolError(f"a host's TRAIN must list 1 to {MAX_RAW_UPDATES} clients")
    if not isinstance(fit, Mapping):
        raise ProtocolError("a host's TRAIN needs 'fit'")
    try:
        base: dict[str, object] = {**FitConfig.from_json(dict(fit)).to_json(), "round": round}
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed fit configuration: {exc}") from None
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("client"), str):
            raise ProtocolError("each client of a host's TRAIN needs a 'client' id")
        base["seed"] = body_int(item, "seed", low=0, high=2**63 - 1)
        out.append((str(item["client"]), FitConfig(**base)))  # type: ignore[arg-type]
    return out


def members_of(body: Mapping[str, object]) -> tuple[list[Member], list[tuple[str, str]]]:
    """The clients a host's ``partial`` stands for, and those that failed with their reasons."""
    raw_members, raw_failures = body.get("members", []), body.get("failures", [])
    if not isinstance(raw_members, list) or not isinstance(raw_failures, list):
        raise ProtocolError("'members' and 'failures' must be lists")
    if len(raw_members) + len(raw_failures) > MAX_RAW_UPDATES:
        raise ProtocolError(f"a host's partial may name at most {MAX_RAW_UPDATES} clients")
    members = []
    for m in raw_members:
        if not isinstance(m, Mapping) or not isinstance(m.get("client"), str):
            raise ProtocolError("each member needs a 'client' id")
        members.append(Member(str(m["client"]), body_int(m, "num_examples", low=1, high=MAX_EXAMPLES), body_metrics(m)))
    failures = []
    for f in raw_failures:
        if not isinstance(f, Mapping) or not isinstance(f.get("client"), str):
            raise ProtocolError("each failure needs a 'client' id")
        failures.append((str(f["client"]), str(f.get("reason", "unspecified"))[:MAX_REASON]))
    named = [m.client_id for m in members] + [c for c, _ in failures]
    if len(set(named)) != len(named):
        raise ProtocolError("a host's partial names a client twice")
    return members, failures


def members_body(members: Sequence[Member], failures: Sequence[tuple[str, str]]) -> dict[str, object]:
    return {
        "members": [{"client": m.client_id, "num_examples": m.num_examples, "metrics": m.metrics} for m in members],
        "failures": [{"client": c, "reason": r[:MAX_REASON]} for c, r in failures],
    }


class HostDirectory:
    """The coordinator's record of which clients a ``ClientHost`` answers for."""

    def __init__(self) -> None:
        self._host_of: dict[str, str] = {}

    def note_registration(self, client_id: str, body: Mapping[str, object]) -> None:
        host = host_of(body)
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
        members, failures = members_of(msg.envelope.body)
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
