"""Attacks on the S3 claim-check store (docs/networked.md, "Claim checks"): clients hold no
credentials, only the presigned URLs the coordinator hands them per message.

moto_server does not check presigned signatures (it accepts any), so where S3 would refuse a URL
the test recomputes the signature S3 computes for the request, with botocore's own signer and
the coordinator's credentials: a URL that opens one key with one method opens nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import boto3
import numpy as np
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from fedhive.core import wire
from fedhive.core.envelope import Deferred, Kind, Message, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import ProtocolError
from fedhive.runtime.payloads import payload_params
from fedhive.storage.s3_artifacts import S3ArtifactStore
from fedhive.transports.claim_grants import CLAIM_KEY, PAYLOAD_URL, UPLOAD_KEY, UPLOAD_URL
from fedhive.transports.wire_codec import WireCodec, claims_store
from storage.conftest import s3  # noqa: F401  (the moto S3 server fixture, found by name)
from storage.test_s3_artifacts import S3_KEY, S3_SECRET, make_store

pytestmark = pytest.mark.s3

SECRETS = {"coord": b"c" * 32, "alice": b"a" * 32, "bob": b"b" * 32}
MODEL = Params({"w": np.full(65_536, 0.25, np.float32)})  # 256 KiB, over the 1 KiB threshold below
UPDATE = Params({"w": np.full(65_536, 0.5, np.float32)})


@pytest.fixture(autouse=True)
def no_credentials_for_clients(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The test process holds no AWS credentials at all: only the coordinator's store is given
    keys (explicitly); clients could not use boto3 if they tried."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path_factory.mktemp("aws") / "none"
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    assert boto3.session.Session().get_credentials() is None
    yield


def coordinator(store: S3ArtifactStore) -> WireCodec:
    return WireCodec(
        SECRETS.get, Verifier(SECRETS.get), store, claim_check_bytes=1024, defer_references=True, grants_uploads=True
    )


def client(name: str) -> WireCodec:  # no artifact store: URLs only
    key = SECRETS[name]
    return WireCodec(lambda _to: key, Verifier({"coord": key}.get), None, claim_check_bytes=1024)


async def train_round(store: S3ArtifactStore) -> tuple[WireCodec, dict[str, Message], dict[str, WireCodec]]:
    coord = coordinator(store)
    names = ("alice", "bob")
    frames = await coord.encode_many([(n, make(Kind.TRAIN, "coord", round=1, payload=MODEL)) for n in names])
    clients = {n: client(n) for n in names}
    trains = {n: await clients[n].decode(f) for n, f in zip(names, frames, strict=True)}
    return coord, trains, clients


def signature_holds(url: str, method: str) -> bool:
    """Whether S3 would accept ``url`` for ``method``: the SigV4 query signature it carries is
    the one the coordinator's credentials give for exactly this method, bucket, key and query."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    carried = query.pop("X-Amz-Signature")
    request = AWSRequest(method=method, url=urlunsplit(parts._replace(query=urlencode(query))))
    request.context["timestamp"] = query["X-Amz-Date"]
    region = query["X-Amz-Credential"].split("/")[2]
    signer = S3SigV4QueryAuth(Credentials(S3_KEY, S3_SECRET), "s3", region, expires=int(query["X-Amz-Expires"]))
    # The signer's steps, at the URL's own time (``add_auth`` would sign for now instead).
    string_to_sign = signer.string_to_sign(request, signer.canonical_request(request))
    return bool(signer.signature(string_to_sign, request) == carried)


def with_key(url: str, key: str, bucket: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{bucket}/{key}"))


async def test_clients_without_credentials_read_the_model_and_write_their_update_through_urls(s3: str) -> None:  # noqa: F811
    store = make_store(s3)
    coord, trains, clients = await train_round(store)
    for train in trains.values():
        assert np.all(payload_params(train, MODEL.spec, max_bytes=1 << 24, what="model")["w"] == 0.25)
    frame = await clients["alice"].encode("coord", make(Kind.UPDATE, "alice", round=1, payload=UPDATE))
    update = await coord.decode(frame)
    assert isinstance(update.payload, Deferred)
    key = update.envelope.body[CLAIM_KEY]
    assert key == trains["alice"].envelope.body[UPLOAD_KEY] and "/uploads/alice/1-" in key
    assert np.all(payload_params(update, UPDATE.spec, max_bytes=1 << 24, what="update")["w"] == 0.5)
    update.payload.discard()  # the round is over: alice's upload is deleted, nothing else
    assert store._s3.list_objects_v2(Bucket=store.bucket, Prefix=key).get("KeyCount") == 0


async def test_a_presigned_url_opens_only_its_own_key_and_method(s3: str) -> None:  # noqa: F811
    store = make_store(s3)
    _coord, trains, _clients = await train_round(store)
    alice, bob = trains["alice"].envelope.body, trains["bob"].envelope.body
    assert signature_holds(bob[PAYLOAD_URL], "GET") and signature_holds(bob[UPLOAD_URL], "PUT")  # the check is sound
    # Bob, with his own URLs, tries Alice's upload key: to read it, overwrite it or delete it.
    for url in (bob[PAYLOAD_URL], bob[UPLOAD_URL]):
        forged = with_key(url, alice[UPLOAD_KEY], store.bucket)
        for method in ("GET", "PUT", "DELETE"):
            assert not signature_holds(forged, method)
    assert not signature_holds(bob[UPLOAD_URL], "GET")  # his PUT URL does not read back
    assert not signature_holds(bob[UPLOAD_URL], "DELETE") and not signature_holds(bob[PAYLOAD_URL], "DELETE")
    assert not signature_holds(bob[PAYLOAD_URL], "PUT")  # nor can he overwrite the global model
    # and the keys they were given differ and are not guessable from each other
    assert alice[UPLOAD_KEY] != bob[UPLOAD_KEY] and alice[UPLOAD_URL] != bob[UPLOAD_URL]


async def test_an_update_naming_a_key_issued_to_another_client_is_refused(s3: str) -> None:  # noqa: F811
    store = make_store(s3)
    coord, _trains, clients = await train_round(store)
    alices = await clients["alice"].encode("coord", make(Kind.UPDATE, "alice", round=1, payload=UPDATE))
    env, _ = wire.decode_frame(alices, max_bytes=1 << 24)
    # Bob saw Alice's key (say, on the wire) and names it in a late update of his own.
    forged = make(Kind.UPDATE, "bob", round=1, body={CLAIM_KEY: env.body[CLAIM_KEY]}).envelope
    forged = forged.model_copy(update={"payload": env.payload})
    with pytest.raises(ProtocolError, match="bob names a claim-check key that was not issued to it"):
        await coord.decode(wire.encode_frame(sign(forged, SECRETS["bob"]), None))
    update = await coord.decode(alices)  # Alice's own stays, and is hers to use
    assert np.all(payload_params(update, UPDATE.spec, max_bytes=1 << 24, what="update")["w"] == 0.5)
    replayed = forged.model_copy(update={"sender": "alice", "msg_id": "f" * 32})
    with pytest.raises(ProtocolError, match="not issued"):  # a key is redeemed once
        await coord.decode(wire.encode_frame(sign(replayed, SECRETS["alice"]), None))


def test_the_claims_area_is_where_the_uploads_go(s3: str) -> None:  # noqa: F811
    store = make_store(s3)
    area = claims_store(store)
    assert isinstance(area, S3ArtifactStore)
    assert area.upload_key("alice/../bob", 4).startswith(f"{area.prefix}uploads/alice_.._bob/4-")
