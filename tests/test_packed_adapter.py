"""Adapters travel as one packed buffer (protocol.messages.state_to_record).

Flower moves every Array of a message as its own object, one request per object on every
hop; a real model's adapter (120 LoRA tensors for SmolLM2-135M) cost ~1.7 s per message in
object pulls alone. The packed record holds two Arrays whatever the adapter, reads back
exactly, and a malformed one (from a dishonest coordinator or site) is refused naming the
key and the value; at the coordinator it fails that site's reply, never the run.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.app.message import make_message
from flwr.app.metadata import Metadata
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from protocol.messages import (
    PACKED_DATA,
    PACKED_LAYOUT,
    RecordError,
    record_to_state,
    state_to_record,
)
from protocol.wire import Field, Key, Status
from server.replies import parse_reply


def _adapter(layers: int = 30) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for i in range(layers):
        for mod, d_out in (("q_proj", 576), ("v_proj", 192)):
            stem = f"base_model.model.model.layers.{i}.self_attn.{mod}"
            out[f"{stem}.lora_A.weight"] = rng.standard_normal((8, 576), dtype=np.float32)
            out[f"{stem}.lora_B.weight"] = rng.standard_normal((d_out, 8), dtype=np.float32)
    return out


def test_a_real_model_adapter_is_two_arrays_and_reads_back_exactly() -> None:
    state = _adapter()
    rec = state_to_record(state)
    assert set(rec) == {PACKED_DATA, PACKED_LAYOUT}
    # what Flower moves one request at a time: the record, its two Arrays (one chunk each)
    assert len(get_all_nested_objects(rec)) <= 5, len(get_all_nested_objects(rec))
    back = record_to_state(ArrayRecord.inflate(rec.deflate(), children=dict(rec.children)))
    assert list(back) == sorted(state)
    for k, v in state.items():
        assert back[k].dtype == np.float32 and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_odd_shapes_and_the_empty_adapter_round_trip() -> None:
    state = {"a": np.float32(3.5) * np.ones((), np.float32), "b": np.zeros((0, 4), np.float32),
             "c": np.arange(6, dtype=np.float64).reshape(2, 3)}
    back = record_to_state(state_to_record(state))
    assert back["a"].shape == () and float(back["a"]) == 3.5
    assert back["b"].shape == (0, 4)
    np.testing.assert_array_equal(back["c"], np.arange(6).reshape(2, 3))
    assert record_to_state(state_to_record({})) == {}


def _packed(layout: Any, data: np.ndarray) -> ArrayRecord:
    text = layout if isinstance(layout, bytes) else json.dumps(layout).encode()
    return ArrayRecord({PACKED_DATA: Array(data),
                        PACKED_LAYOUT: Array(np.frombuffer(text, dtype=np.uint8).copy())})


_F = np.zeros(6, np.float32)
MALFORMED = {
    "not-json": (_packed(b"{names", _F), "is not JSON"),
    "names-not-strings": (_packed({"names": [1], "shapes": [[6]]}, _F), ".names must be"),
    "repeated-name": (_packed({"names": ["a", "a"], "shapes": [[3], [3]]}, _F),
                      "repeats a name"),
    "negative-dim": (_packed({"names": ["a"], "shapes": [[-6]]}, _F), ".shapes must be"),
    "bool-dim": (_packed({"names": ["a"], "shapes": [[True]]}, _F), ".shapes must be"),
    "too-few-values": (_packed({"names": ["a"], "shapes": [[7]]}, _F),
                       "describes 7 values, `adapter` holds 6"),
    "huge-claim": (_packed({"names": ["a"], "shapes": [[1 << 40, 1 << 40]]}, _F),
                   f"describes {1 << 80} values"),
    "wraps-int64": (_packed({"names": ["a", "b"], "shapes": [[1 << 32, 1 << 32], [6]]}, _F),
                    f"describes {(1 << 64) + 6} values"),
    "float64-data": (_packed({"names": ["a"], "shapes": [[6]]}, np.zeros(6)),
                     "must be a 1-D float32 buffer"),
    "2-d-data": (_packed({"names": ["a"], "shapes": [[6]]}, _F.reshape(2, 3)),
                 "must be a 1-D float32 buffer"),
    "extra-key": (ArrayRecord({**dict(_packed({"names": ["a"], "shapes": [[6]]}, _F)),
                               "smuggled": Array(_F)}), "holds `adapter` and"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_packed_record_is_refused_naming_what(case: str) -> None:
    record, words = MALFORMED[case]
    with pytest.raises(RecordError, match="adapter") as err:
        record_to_state(record)
    assert words in str(err.value), err.value


def test_a_site_reply_with_a_malformed_adapter_fails_that_site_only() -> None:
    record, _ = MALFORMED["too-few-values"]
    meta = Metadata(run_id=1, message_id="m", src_node_id=7, dst_node_id=0,
                    reply_to_message_id="r", group_id="1", created_at=0.0, ttl=60,
                    message_type="train")
    content = RecordDict({Key.CONFIG: ConfigRecord({Field.STATUS: Status.OK,
                                                    Field.SITE: "bank"}),
                          Key.ARRAYS: record})
    reply = parse_reply(make_message(metadata=meta, content=content))
    assert reply.status == Status.FAILED and "describes 7 values" in reply.reason, reply
    assert reply.arrays is None and reply.node_id == 7
