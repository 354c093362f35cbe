#!/usr/bin/env bash
# The GPU benchmarks in one command, for a lent GPU (about 6-8 minutes on an H100/H200), one section each:
#   1. image encoder (vit_b_ori, 128^3), batch 1/8/32, bf16: sammoe eager and compiled vs the official encoder;
#   2. click latency through the Predictor (first click, refinement step, add_click end to end), bf16;
#   3. training steps (expert finetuning, gate training) bf16 vs the official loop, with peak memory.
#       bash benchmarks/gpu.sh            # from the repository root, inside the venv (make install)
#       bash benchmarks/gpu.sh --smoke    # the same commands at CPU smoke sizes (checks the script itself)
# Every section prints its own table with the device, dtype and medians; paste them into the README's Speed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${1:-}" == "--smoke" ]]; then
    $PY benchmarks/segment.py --smoke --modes clicks
    $PY benchmarks/train_step.py --smoke --modes sft
    exit 0
fi
$PY - <<'PYEOF'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs a CUDA GPU (use --smoke to check it on a CPU)"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")
PYEOF
echo "== 1. image encoder, eager =="
timeout 240 $PY benchmarks/encoder.py --device cuda --dtype bf16 --batch 1 8 32 --repeats 5 --warmup 2
echo "== 1b. image encoder, torch.compile (ours only) =="
timeout 240 $PY benchmarks/encoder.py --device cuda --dtype bf16 --batch 1 8 32 --repeats 5 --warmup 3 --compile --skip-official
echo "== 2. click latency (Predictor, vit_b_ori, bf16 autocast) =="
timeout 120 $PY benchmarks/segment.py --preset vit_b_ori --device cuda --modes clicks --repeats 5 --clicks 20
echo "== 3. training steps (bf16, batch 2, 11 iterations) =="
timeout 240 $PY benchmarks/train_step.py --device cuda --dtype bf16 --batch 2 --modes sft gate --steps 5 --warmup 2
