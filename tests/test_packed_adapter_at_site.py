"""A coordinator that sends a lying adapter layout gets an error, and the site spends nothing.

The global adapter reaches a site as one buffer and a layout the coordinator writes
(protocol.messages). A dishonest coordinator may make that layout claim more values than
the buffer holds, name tensors the site's model does not have, or smuggle an extra Array
beside the two. The unmodified ClientApp must refuse every such train and evaluate message
before it trains or evaluates: an error reply, no delta, no figures, no ledger entry and
no row in the site's own log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict

from privacy.ledger import LEDGER_FILENAME
from protocol.instructions import RoundInstructions
from protocol.messages import PACKED_DATA, PACKED_LAYOUT, state_to_record
from protocol.site_log import SITE_LOG
from protocol.wire import Key, MessageType
from tests._loopback import server_identity
from tests.test_site_requires_secure_aggregation import SITES, _grid, _start_state


def _lie(state: dict[str, Any], how: str) -> ArrayRecord:
    rec = state_to_record(state)
    flat = rec[PACKED_DATA].numpy()
    layout = json.loads(rec[PACKED_LAYOUT].numpy().tobytes())
    if how == "more-values-than-sent":
        layout["shapes"][0] = [d * 2 for d in layout["shapes"][0]]
    elif how == "a-tensor-the-model-lacks":
        layout["names"][0] = "base_model.model.smuggled.lora_A.weight"
    elif how == "an-extra-array":
        return ArrayRecord({**dict(rec), "smuggled": Array(np.zeros(3, np.float32))})
    text = json.dumps(layout).encode()
    return ArrayRecord({PACKED_DATA: Array(flat),
                        PACKED_LAYOUT: Array(np.frombuffer(text, dtype=np.uint8).copy())})


@pytest.mark.parametrize("how", ["more-values-than-sent", "a-tensor-the-model-lacks",
                                 "an-extra-array"])
def test_a_lying_layout_is_refused_before_any_training_or_evaluation(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, how: str
) -> None:
    grid, cfg = _grid(tmp_path, tiny_model, tiny_sites, enrolled=False)
    instr = RoundInstructions.for_round(cfg, round_num=1, run_id="feed")
    arrays = _lie(_start_state(cfg), how)
    with server_identity():
        messages = [Message(RecordDict({Key.ARRAYS: arrays, Key.CONFIG: instr.to_record()}),
                            dst_node_id=n, message_type=kind, group_id="1")
                    for kind in (MessageType.TRAIN, MessageType.EVALUATE)
                    for n in (101, 102, 103)]
        replies = grid.send_and_receive(messages)
    assert len(replies) == 6 and all(r.has_error() for r in replies), \
        [r.content[Key.CONFIG] for r in replies if not r.has_error()]
    for site in SITES:  # nothing trained or evaluated, nothing charged
        assert not (tmp_path / "sites" / site / LEDGER_FILENAME).exists()
        assert not (tmp_path / "sites" / site / SITE_LOG).exists()
