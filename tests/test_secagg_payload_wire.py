"""A malformed secure-aggregation payload from a peer is a ValueError, never another error."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict

from protocol.messages import get_payload
from protocol.wire import Field, Key


@pytest.mark.parametrize(
    "raw",
    [
        '{"a": {"b64": 5}}',
        '{"a": {"b64": "!!"}}',
        "[" * 100_000 + "]" * 100_000,
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"a": [[[[[[1]]]]]]}',
    ],
    ids=["b64-int", "b64-garbage", "deep-array", "deep-field", "six-deep"],
)
def test_malformed_payloads_raise_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        get_payload(RecordDict({Key.SECAGG: ConfigRecord({Field.PAYLOAD: raw})}))
