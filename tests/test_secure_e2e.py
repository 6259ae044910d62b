"""Secure aggregation end to end through Flower, with sites dropping mid-round.

Run A: secure aggregation on; one site crashes after sending its masked input (before
unmask), another before sending it. Run B: the same seeds, in the clear, with only the
second site missing. Without DP, local training is seeded by public (seed, round, site), so
B's adapter is the plaintext aggregate of A's contributors: A must equal it within the
decoding bound. (With DP each site's noise comes from its own secret, never shared between
two runs, so the comparison is made without it; tests/test_dp_e2e.py covers DP with secure
aggregation.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protocol.adapter import load_adapter_dir
from protocol.run_folder import RunFolder
from protocol.wire import MessageType, Stage
from tests.test_simulation import _simulate


def _run(out: Path, tiny_model: Path, tiny_sites: Path, *extra: str) -> None:
    proc = _simulate("--sites", "5", "--rounds", "1", "--out", str(out), "--model",
                     str(tiny_model), "--data", str(tiny_sites), "--local-steps", "2",
                     "--dp", "off", "--quiet", *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_dropouts_at_two_stages_still_release_the_exact_survivor_aggregate(
    tmp_path: Path, tiny_model: Path, tiny_sites: Path
) -> None:
    a, b = tmp_path / "secure", tmp_path / "plain"
    # a 64-bit ring (--secagg-bits) pins exactness to 1e-6; the default lean ring is <= 32 bits
    _run(a, tiny_model, tiny_sites, "--secagg-bits", "64", "--faults",
         f"alpha-0@{Stage.UNMASK}@1,beta-0@{Stage.MASKED_INPUT}@1")
    _run(b, tiny_model, tiny_sites, "--secagg", "off", "--faults",
         f"beta-0@{MessageType.TRAIN}@1")

    part_a = RunFolder(a).read_participation()[0]
    part_b = RunFolder(b).read_participation()[0]
    assert part_a.released is True
    # alpha-0's masked input is in the sum although it vanished before unmasking
    assert part_a.contributed == ("alpha-0", "alpha-1", "beta-1", "gamma")
    assert "beta-0" in (part_a.dropped or ()) or "beta-0" in part_a.failed
    assert part_a.threshold is not None and part_a.threshold <= 4
    assert part_b.contributed == part_a.contributed

    secure, _ = load_adapter_dir(RunFolder(a).round_adapter(1))
    plain, _ = load_adapter_dir(RunFolder(b).round_adapter(1))
    assert part_a.decoding_error_bound is not None
    bound = part_a.decoding_error_bound["per_coordinate"]
    assert 0 < bound < 1e-6
    moved = max(float(np.abs(plain[k]).max()) for k in plain if "lora_B" in k)
    assert moved > 100 * bound  # the round really changed the adapter
    for k in plain:
        np.testing.assert_allclose(secure[k], plain[k], rtol=0, atol=bound + 1e-6)
