"""Attacks on the local claim-check store (docs/networked.md, "Claim checks"): what it guarantees.

- A payload rewritten in place while receivers fetch it is never decoded: each receiver checks the
  digest on its own copy and decodes that copy (0 tampered payloads decoded).
- A sender naming a claim another sender holds is refused, and the claim stays: only a sender's
  own claims are ever given back (recycled).
- Another account on the machine can neither list, read, replace nor delete artifacts. Processes
  of the store's own account can (the store is for one machine and one trust domain): that case
  is covered by the digest on private copies above, not by file modes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from fedhive.core import wire
from fedhive.core.envelope import Deferred, Kind, make
from fedhive.core.params import Params
from fedhive.core.signing import Verifier, sign
from fedhive.errors import PayloadError, ProtocolError
from fedhive.runtime.payloads import payload_params
from fedhive.storage.artifacts import LocalArtifactStore
from fedhive.transports.wire_codec import WireCodec, claims_store

SECRETS = {"coord": b"c" * 32, "alice": b"a" * 32, "bob": b"b" * 32, "mallory": b"m" * 32}
MODEL = Params({"w": np.full(262_144, 0.25, np.float32)})  # 1 MiB, over the 1 KiB threshold below
RECEIVERS = 24
NOBODY = 65534


def codec(node: str, store: LocalArtifactStore, **kw: object) -> WireCodec:
    return WireCodec(lambda _to: SECRETS[node], Verifier(SECRETS.get), store, claim_check_bytes=1024, **kw)  # type: ignore[arg-type]


def claim_path(store: LocalArtifactStore, ref: str) -> Path:
    area = claims_store(store)
    assert isinstance(area, LocalArtifactStore)
    return area.root / ref[7:9] / ref[9:]


async def test_a_payload_rewritten_in_place_after_its_check_is_never_decoded(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    frames = await codec("coord", store).encode_many(
        [(f"r{i}", make(Kind.TRAIN, "coord", payload=MODEL)) for i in range(RECEIVERS)]
    )
    received = []
    for frame in frames:  # every receiver fetches the global model and checks its digest
        receiver = WireCodec(lambda _to: SECRETS["coord"], Verifier({"coord": SECRETS["coord"]}.get), store)
        received.append(await asyncio.wait_for(receiver.decode(frame), timeout=60))

    # Then the attacker (the store's own account: it can make the file writable again) rewrites
    # the file in place, before the receivers decode what they checked.
    honest = claim_path(store, "sha256:" + _ref_digest(frames[0]))
    original = honest.read_bytes()
    os.chmod(honest, 0o600)
    with honest.open("r+b") as f:
        f.write(original.replace(np.float32(0.25).tobytes(), np.float32(-9.0).tobytes()))

    decoded = [payload_params(m, MODEL.spec, max_bytes=1 << 24, what="model")["w"] for m in received]
    tampered = sum(1 for w in decoded if not np.all(w == 0.25))
    assert tampered == 0 and len(decoded) == RECEIVERS
    # and a receiver that fetches after the rewrite refuses it
    late = WireCodec(lambda _to: SECRETS["coord"], Verifier({"coord": SECRETS["coord"]}.get), store)
    with pytest.raises(PayloadError, match="sha256"):
        await late.decode(frames[0])


def _ref_digest(frame: bytes) -> str:  # every frame names the same claim
    env, _ = wire.decode_frame(frame, max_bytes=1 << 24)
    assert env.payload is not None and env.payload.ref is not None
    return env.payload.ref[7:]


async def test_a_late_update_naming_another_clients_claim_is_refused_and_the_claim_stays(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path)
    coordinator = codec("coord", store, defer_references=True)
    alices = await codec("alice", store).encode("coord", make(Kind.UPDATE, "alice", round=3, payload=MODEL))
    held = await coordinator.decode(alices)
    assert isinstance(held.payload, Deferred)
    desc = held.envelope.payload
    assert desc is not None and desc.ref is not None

    # Mallory read the claim's name (the store's listing, or a captured frame) and names it in a
    # late update of its own, signed with its own key: its payload descriptor is Alice's.
    from fedhive.core import wire

    forged = make(Kind.UPDATE, "mallory", round=2).envelope.model_copy(update={"payload": desc})
    with pytest.raises(ProtocolError, match="mallory names a claim check that alice sent"):
        await coordinator.decode(wire.encode_frame(sign(forged, SECRETS["mallory"]), None))
    assert claims_store(store).exists(desc.ref)  # not recycled
    assert np.all(payload_params(held, MODEL.spec, max_bytes=1 << 24, what="alice's update")["w"] == 0.25)

    held.payload.discard()  # Alice's round is over: her own claim goes back
    assert not claims_store(store).exists(desc.ref)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to act as another account")
def test_another_account_can_neither_list_read_replace_nor_delete_artifacts() -> None:
    # A directory every account may enter, like /var/lib on a shared machine (pytest's own
    # temporary directories are closed to other accounts, which would prove nothing).
    with tempfile.TemporaryDirectory(dir="/tmp") as machine:
        shared = Path(machine)
        shared.chmod(0o755)
        _attack_as_nobody(shared)


def _attack_as_nobody(shared: Path) -> None:
    store = LocalArtifactStore(shared / "artifacts")
    ref = claims_store(store).put(b"an update of alice")
    target = claim_path(store, ref)
    control = shared / "public.txt"
    control.write_text("readable by all")
    control.chmod(0o644)
    area = target.parent.parent

    def as_nobody(*argv: str) -> bool:  # coreutils: this account cannot run the test's Python
        return subprocess.run(argv, user=NOBODY, cwd="/", capture_output=True, timeout=60).returncode == 0

    assert as_nobody("cat", str(control))  # the control: this account reads what is open to it
    assert not as_nobody("ls", str(area))
    assert not as_nobody("cat", str(target))
    assert not as_nobody("sh", "-c", f"echo x >> '{target}'")
    assert not as_nobody("rm", "-f", str(target))
    assert not as_nobody("mv", str(control), str(target))
    assert claims_store(store).get(ref) == b"an update of alice"
