"""A big fetched payload that several virtual clients of one process share is decoded and checked
once; anything else is decoded as before."""

from __future__ import annotations

import numpy as np
import pytest

from fedhive.core import codec
from fedhive.core.envelope import Deferred, Kind, make
from fedhive.core.params import Params
from fedhive.errors import PayloadError
from fedhive.runtime.payloads import payload_params

MODEL = Params({"w": np.full(600_000, 0.5, np.float32)})


def test_one_fetched_payload_is_decoded_once_for_all_its_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = codec.decode
    monkeypatch.setattr(codec, "decode", lambda *a, **k: calls.append(1) or real(*a, **k))
    view = memoryview(codec.encode(MODEL))
    msgs = [make(Kind.TRAIN, "coordinator", payload=view) for _ in range(5)]  # one fetched object
    got = [payload_params(m, MODEL.spec, max_bytes=1 << 24, what="global model") for m in msgs]
    assert len(calls) == 1 and all(g is got[0] for g in got)
    # A lower limit, another object with the same bytes, or a deferred payload: decoded anew.
    with pytest.raises(PayloadError, match="exceeds"):
        payload_params(msgs[0], MODEL.spec, max_bytes=1000, what="global model")
    payload_params(make(Kind.TRAIN, "c", payload=memoryview(bytes(view))), MODEL.spec, max_bytes=1 << 24, what="m")
    deferred = Deferred(view.nbytes, lambda: view)
    payload_params(make(Kind.UPDATE, "c", payload=deferred), MODEL.spec, max_bytes=1 << 24, what="update")
    assert len(calls) == 4
