"""Secure aggregation (SecAgg+, Bell et al. 2020, over the steps of Bonawitz et al. 2017): the
server learns the sum of the clients' updates and nothing else about any one of them
(docs/secure_aggregation.md).

- ``graph``: the k-regular neighbour graph each client pairs and shares its secrets in;
- ``sizing``: the default ``k`` for a round's clients, and the failure bounds of any ``k`` and ``t``;
- ``quantise``: updates as fixed-point ``uint64`` vectors, weighted as FedAvg weighs them;
- ``shamir``: threshold secret sharing, so that survivors can remove a dropped client's masks;
- ``masks``: X25519 key agreement, AES-CTR mask expansion, AES-GCM sealed shares and escrows;
- ``channel``: each client's ``c`` and ``s`` key pairs kept for the session, each pair's secrets
  agreed once;
- ``client`` / ``server``: the two state machines of one round; ``messages``: what they exchange;
- ``round``: one secure sum among in-process clients; ``host_link``: its place in ``simulate``;
- over a broker: ``wire`` (each step in an existing message kind), ``node_round`` (the
  coordinator's or a combiner's side), ``node_client`` (a ``fedhive client``'s side).
"""

from fedhive.secagg.client import SecAggClient
from fedhive.secagg.errors import SecAggError
from fedhive.secagg.quantise import FixedPoint
from fedhive.secagg.server import SecAggServer

__all__ = ["FixedPoint", "SecAggClient", "SecAggError", "SecAggServer"]
