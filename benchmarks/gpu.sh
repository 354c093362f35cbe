#!/usr/bin/env bash
# The GPU benchmarks in one command, for a lent GPU (about 5-8 minutes on an H100/H200):
#   1. image encoder (vit_b_ori, 128^3), batch 1/8/32, bf16: ours eager and compiled vs the official encoder;
#   2. click latency through the Predictor (first click, refinement step, add_click end to end), bf16;
#   3. training steps (expert finetuning, gate training) bf16 vs the official loop, with peak memory;
#   4. a cohort through `sammoe predict` (24 CT-sized scans): cases/min, and a 512x512x300 scan's peak memory;
# then one table of all three (benchmarks/gpu_summary.py).
#       bash benchmarks/gpu.sh [LOGDIR]           # from the repository root, inside the venv (make install)
#       bash benchmarks/gpu.sh --smoke [LOGDIR]   # the same commands at CPU smoke sizes (checks the script)
# LOGDIR (default runs/gpu_benchmarks) receives each section's log and JSON. A section that fails or runs
# past its time limit is reported and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then
    SMOKE=(--smoke)
    shift
fi
LOGDIR=${1:-runs/gpu_benchmarks}
mkdir -p "$LOGDIR"
if [[ ${#SMOKE[@]} -eq 0 ]]; then
    $PY -c 'import torch, sys; torch.cuda.is_available() or sys.exit("benchmarks/gpu.sh needs a CUDA GPU (--smoke checks it on a CPU)"); print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}")' || exit 1
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
fi

section() {  # section NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name =="
    local start=$SECONDS
    timeout "$limit" "$@" "${SMOKE[@]}" 2>&1 | tee "$LOGDIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - start)) s =="
}

section encoder 240 $PY benchmarks/encoder.py --device cuda --dtype bf16 --batch 1 8 32 --repeats 5 --warmup 3 \
    --compile --json "$LOGDIR/encoder.json"
section clicks 120 $PY benchmarks/segment.py --preset vit_b_ori --device cuda --modes clicks --repeats 5 \
    --clicks 20 --json "$LOGDIR/clicks.json"
section train_step 180 $PY benchmarks/train_step.py --device cuda --dtype bf16 --batch 2 --modes sft gate \
    --steps 5 --warmup 2 --json "$LOGDIR/train_step.json"
section cohort 200 $PY benchmarks/cohort.py --device cuda --cases 24 --skip-per-process --memory-slices 300 \
    --json "$LOGDIR/cohort.json"
echo "== summary =="
$PY benchmarks/gpu_summary.py "$LOGDIR" | tee "$LOGDIR/summary.txt"
