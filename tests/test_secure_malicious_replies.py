"""Malicious sites at the Flower-message level: each malformed reply drops one site with a
named reason, never the run, and the round releases the exact mean of the honest sites.

Four sites run one secure round over the real ServerApp and ClientApp code
(:class:`tests._loopback.LoopbackGrid`); one site's reply at one stage is corrupted on its way
back. The reference is the same run without the corrupt site (training is seeded per site and
round): the released adapter must equal it within the decoding bound.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from client.app import app
from protocol.adapter import load_adapter_dir
from protocol.config import RunConfig
from protocol.wire import Field, Key, MessageType, Metric
from server.app import run_server
from server.rundir import RunDir
from tests._loopback import LoopbackGrid, enrol, server_identity

SITES = ("alpha", "beta", "gamma", "delta")
NODES = {101 + i: {"partition-id": i, "num-partitions": 4} for i in range(4)}
BAD = 104  # partition 3 of the sorted site folders: "gamma"


def _set_metric(name: str, value: Any) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        metrics = dict(content[Key.METRICS]) if Key.METRICS in content else {}
        metrics[name] = value
        content[Key.METRICS] = MetricRecord(metrics)
    return corrupt


def _set_payload(text: Any) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        content[Key.SECAGG] = ConfigRecord({Field.PAYLOAD: text})
    return corrupt


def _drop_record(key: str) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        del content[key]
    return corrupt


def _site_name(value: Any) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        status = dict(content[Key.CONFIG])
        status[Field.SITE] = value
        content[Key.CONFIG] = ConfigRecord(status)
    return corrupt


class CorruptingGrid(LoopbackGrid):
    """The loopback grid, with one node's reply of one message type corrupted."""

    def __init__(self, *args: Any, node: int, kind: str,
                 corrupt: Callable[[RecordDict], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node, self.kind, self.corrupt = node, kind, corrupt

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        sent = {m.metadata.dst_node_id: m for m in messages}
        replies = super().send_and_receive(messages, timeout=timeout)
        out = []
        for r in replies:
            src = r.metadata.src_node_id
            if (src == self.node and sent[src].metadata.message_type == self.kind
                    and not r.has_error()):
                content = RecordDict(dict(r.content.items()))
                self.corrupt(content)
                r = Message(content, reply_to=sent[src])
            out.append(r)
        return out


def _deep(n: int) -> str:
    return "[" * n + "]" * n


#: (id, message type, corruption, reason named, is the site's input in the sum): a site
#: whose masked input was accepted stays in the sum (its self mask is recovered from the
#: others' shares) even if its later replies are garbage
CASES = [
    ("b64-int", MessageType.SECAGG_ADVERTISE, _set_payload(json.dumps({"enc-pk": {"b64": 5}})),
     "malformed secure-aggregation payload", False),
    ("deep-payload", MessageType.SECAGG_SHARE, _set_payload(_deep(100_000)),
     "nested too deeply", False),
    ("epsilon-list", MessageType.SECAGG_MASKED, _set_metric(Metric.EPSILON, [1.0, 2.0]),
     "metric `epsilon`", False),
    ("num-examples-float", MessageType.SECAGG_MASKED, _set_metric(Metric.NUM_EXAMPLES, 3.5),
     "metric `num-examples`", False),
    ("train-loss-nan", MessageType.SECAGG_MASKED, _set_metric(Metric.TRAIN_LOSS, float("nan")),
     "metric `train-loss`", False),
    ("oversize", MessageType.SECAGG_MASKED, _set_payload(" " * ((64 << 20) + 1)),
     "at most 64 MiB", False),
    ("no-payload", MessageType.SECAGG_CONSISTENCY, _drop_record(Key.SECAGG),
     "consistency-check", True),
    ("site-not-a-string", MessageType.SECAGG_UNMASK, _site_name(7), "is not a string", True),
]


def _config(tmp_path: Path, data: Path, model: Path, out: str, **extra: Any) -> RunConfig:
    return RunConfig.from_mapping({
        "num-server-rounds": 1, "model": str(model), "data-dir": str(data),
        "out-dir": str(tmp_path / out), "sites-state-dir": str(tmp_path / f"{out}-sites"),
        "secagg": True, "secagg-enrolment": str(tmp_path / "enrolment.json"),
        "min-sites": 3, "local-steps": 1, "batch-size": 8, "max-seq-len": 32,
        "max-eval-examples": 4, "device": "cpu", **extra,
    })


def _data(tmp_path: Path, tiny_sites: Path) -> Path:
    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(tiny_sites, data)
        shutil.copytree(tiny_sites / "alpha", data / "delta")
    return data


def _run(tmp_path: Path, cfg: RunConfig, grid: LoopbackGrid) -> None:
    names = {s: Path(str(cfg.sites_state_dir)) / s for s in SITES}
    enrol(names, tmp_path / "enrolment.json")
    with server_identity():
        run_server(grid, cfg)  # type: ignore[arg-type]


def _reference(tmp: Path, tiny_model: Path, tiny_sites: Path, nodes: dict[int, Any],
               **extra: Any) -> tuple[dict[str, np.ndarray], Any]:
    cfg = _config(tmp, _data(tmp, tiny_sites), tiny_model, "run", **extra)
    _run(tmp, cfg, LoopbackGrid(app, nodes, cfg.to_mapping()))
    folder = RunDir(cfg.out_dir)
    (part,) = folder.read_participation()
    state, _ = load_adapter_dir(folder.round_adapter(1))
    return state, part


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
           tiny_sites: Path) -> dict[bool, tuple[dict[str, np.ndarray], Any]]:
    """Honest runs without gamma (alpha, beta, delta) and with it: the means to expect."""
    without = {n: c for n, c in NODES.items() if n != BAD}
    return {False: _reference(tmp_path_factory.mktemp("three"), tiny_model, tiny_sites,
                              without),
            True: _reference(tmp_path_factory.mktemp("four"), tiny_model, tiny_sites, NODES)}


@pytest.mark.parametrize("case,kind,corrupt,reason,in_sum", CASES, ids=[c[0] for c in CASES])
def test_a_malformed_reply_drops_one_site_and_the_round_releases_the_honest_mean(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, honest: Any, case: str, kind: str,
    corrupt: Callable[[RecordDict], None], reason: str, in_sum: bool,
) -> None:
    # arrange: four sites, gamma's reply to `kind` corrupted on its way back
    cfg = _config(tmp_path, _data(tmp_path, tiny_sites), tiny_model, "run")
    grid = CorruptingGrid(app, NODES, cfg.to_mapping(), node=BAD, kind=kind, corrupt=corrupt)

    # act: the run completes
    _run(tmp_path, cfg, grid)

    # assert: gamma is out of the round with a named reason, the others are not; the mean
    # released is the honest run's (with gamma's input only where it was accepted)
    folder = RunDir(cfg.out_dir)
    (part,) = folder.read_participation()
    assert part.released is True
    assert part.contributed == ("alpha", "beta", "delta", "gamma")[:4 if in_sum else 3]
    assert set(part.failed) == {"gamma"} and reason in part.failed["gamma"], part.failed
    want, ref = honest[in_sum]
    got, _ = load_adapter_dir(folder.round_adapter(1))
    assert part.decoding_error_bound is not None and ref.decoding_error_bound is not None
    bound = part.decoding_error_bound["per_coordinate"] + ref.decoding_error_bound["per_coordinate"]
    moved = max(float(np.abs(want[k]).max()) for k in want if "lora_B" in k)
    assert moved > 100 * bound  # the round really changed the adapter
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=bound + 1e-7)


# ----------------------------------------------------------------------------- lean rings

#: a lean ring: the masked vector travels as uint16 (16 bits) or uint32 (20 bits); the max
#: weight is near the sites' real sizes so that the grid is fine enough to see the update
LEAN = {"secagg-max-weight": 64.0, "secagg-clip": 4.0}


def _set_vector(change: Callable[[np.ndarray], np.ndarray]) -> Callable[[RecordDict], None]:
    def corrupt(content: RecordDict) -> None:
        rec: Any = content[Key.SECAGG_ARRAYS]
        vector = rec["masked-vector"].numpy()
        content[Key.SECAGG_ARRAYS] = ArrayRecord({"masked-vector": Array(change(vector))})
    return corrupt


def _out_of_range(bits: int) -> Callable[[np.ndarray], np.ndarray]:
    def change(vector: np.ndarray) -> np.ndarray:
        out = vector.copy()
        out[0] = 1 << bits
        return out
    return change


#: (id, ring bits, corruption of gamma's masked vector, reason named): each is refused at
#: the masked-input stage, so gamma's input is never in the sum
RING_CASES = [
    ("uint32-on-a-16-bit-ring", 16, _set_vector(lambda v: v.astype(np.uint32)),
     "`masked-vector` must be a uint16 array for the ring Z/2^16, got uint32"),
    ("signed", 16, _set_vector(lambda v: v.view(np.int16)), "got int16"),
    ("byte-swapped", 16, _set_vector(lambda v: v.astype(">u2")), "got >u2"),
    ("float", 16, _set_vector(lambda v: v.astype(np.float32)), "got float32"),
    ("two-d", 16, _set_vector(lambda v: v.reshape(-1, 1)), "`masked-vector` has shape"),
    ("one-short", 16, _set_vector(lambda v: v[:-1]), "`masked-vector` has shape"),
    ("out-of-range", 20, _set_vector(_out_of_range(20)),
     "`masked-vector` holds values >= 2^20"),
]


@pytest.fixture(scope="module")
def honest_lean(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
                tiny_sites: Path) -> tuple[dict[str, np.ndarray], Any]:
    """The honest run without gamma on a 16-bit ring: the mean to expect."""
    without = {n: c for n, c in NODES.items() if n != BAD}
    return _reference(tmp_path_factory.mktemp("lean"), tiny_model, tiny_sites, without,
                      **LEAN, **{"secagg-bits": 16})


@pytest.mark.parametrize("case,bits,corrupt,reason", RING_CASES, ids=[c[0] for c in RING_CASES])
def test_a_masked_vector_of_the_wrong_dtype_shape_or_range_for_the_ring_drops_that_site(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path, honest_lean: Any, case: str, bits: int,
    corrupt: Callable[[RecordDict], None], reason: str,
) -> None:
    # arrange: four sites on a lean ring, gamma's masked vector corrupted on its way back
    cfg = _config(tmp_path, _data(tmp_path, tiny_sites), tiny_model, "run", **LEAN,
                  **{"secagg-bits": bits})
    grid = CorruptingGrid(app, NODES, cfg.to_mapping(), node=BAD,
                          kind=MessageType.SECAGG_MASKED, corrupt=corrupt)

    # act: the run completes
    _run(tmp_path, cfg, grid)

    # assert: gamma is out at the masked input with the reason named; the round releases the
    # honest sites' mean (within both runs' decoding bounds)
    folder = RunDir(cfg.out_dir)
    (part,) = folder.read_participation()
    assert part.released is True and part.modulus_bits == bits
    assert part.contributed == ("alpha", "beta", "delta")
    assert set(part.failed) == {"gamma"}, part.failed
    assert part.failed["gamma"].startswith("masked-input: ") and reason in part.failed["gamma"]
    want, ref = honest_lean
    got, _ = load_adapter_dir(folder.round_adapter(1))
    assert part.decoding_error_bound is not None and ref.decoding_error_bound is not None
    bound = part.decoding_error_bound["per_coordinate"] + ref.decoding_error_bound["per_coordinate"]
    moved = max(float(np.abs(want[k]).max()) for k in want if "lora_B" in k)
    assert moved > 20 * bound  # the round really changed the adapter
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=bound + 1e-7)
