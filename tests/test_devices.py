"""Device names a user types: one line for a device this machine lacks, `gpu` meaning cuda."""

from __future__ import annotations

import torch

from sammoe.inference import devices


def test_gpu_is_an_alias_of_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.usable_device("gpu") == torch.device("cuda")
    assert devices.usable_device(" GPU:1 ") == torch.device("cuda", 1)


def test_bf16_follows_a_cpu_capped_to_avx2():
    """Measuring as an AVX2 laptop on an AVX-512 machine (the benchmarks' --cpu-capability avx2): torch's
    capability drops and the automatic precision is float32, as on a real AVX2 CPU."""
    import os
    import subprocess
    import sys

    code = (
        "import torch; from sammoe.inference.devices import bf16_pays; "
        "print(torch.backends.cpu.get_cpu_capability(), bf16_pays(torch.device('cpu'), 768))"
    )
    env = dict(os.environ, ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["AVX2", "False"]
