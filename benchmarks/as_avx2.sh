#!/usr/bin/env bash
# Run any command as an AVX2 CPU on an AVX-512 machine (what benchmarks' --cpu-capability avx2 does, for
# commands without that option):
#       bash benchmarks/as_avx2.sh .venv/bin/python benchmarks/segment.py --modes official
#       bash benchmarks/as_avx2.sh .venv/bin/sammoe segment --image ct.nii.gz --clicks clicks.json ...
# ATen's kernels, oneDNN and MKL each read their variable when torch loads them, so they are set here, before
# the command starts. Refuses in one line (exit 3) unless torch then reports AVX2; the python that checks is
# $PYTHON, else the checkout's .venv, else python3. See benchmarks/README.md.
set -euo pipefail
if [[ $# -eq 0 ]]; then
    echo "usage: bash benchmarks/as_avx2.sh COMMAND [ARGS...]" >&2
    exit 2
fi
export ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
[[ -x $venv ]] || venv=python3
python=${PYTHON:-$venv}
if ! got=$("$python" -c 'import torch; print(torch.backends.cpu.get_cpu_capability())'); then
    echo "as_avx2.sh: $python could not import torch to check the capability; not running" >&2
    exit 3
fi
if [[ $got != AVX2 ]]; then
    echo "as_avx2.sh: torch reports $got with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2; not running" >&2
    exit 3
fi
exec "$@"
