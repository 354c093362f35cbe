"""Which torch device a user's ``--device`` names (refused in one line when this machine does not have it),
and whether bf16 autocast pays on it."""

from __future__ import annotations

import torch

from sammoe.errors import ConfigError


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has; ConfigError (one line, no torch list) otherwise."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    asked = device
    if isinstance(device, str):
        device = device.strip().lower()
        if device == "gpu" or device.startswith("gpu:"):  # what people type; torch calls it cuda
            device = "cuda" + device[3:]
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        parsed = None
    if (
        parsed is not None
        and (parsed.type == "cpu" or available.get(parsed.type))
        and (parsed.type != "cuda" or parsed.index is None or parsed.index < torch.cuda.device_count())
    ):
        return parsed
    have = ", ".join(["cpu", *(f"{k} (or {k}:N)" if k == "cuda" else k for k, ok in available.items() if ok)])
    raise ConfigError(f"device {str(asked)!r} is not available here; use auto or one of: {have}")


# Encoders at least this wide (vit_b_ori: 768) spend their time in matrix products, where bf16 pays on a CPU
# with native bf16: 0.57 vs 0.82 s for a vit_b_ori first click on an AVX512-BF16 EPYC. The 0.7 M-parameter
# demo model was slower in bf16 there (8.6 vs 8.2 s per phantom case), so it stays float32.
BF16_MIN_CPU_WIDTH = 384


def cpu_has_native_bf16() -> bool:
    """True when torch computes bf16 in hardware here: the CPU has AVX512-BF16 or AMX, and torch and oneDNN
    were not capped below it (``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, as when measuring
    for an AVX2 laptop on a bigger machine); elsewhere bf16 is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: no cheap way to tell, so stay float32
        return False
    if not ("avx512_bf16" in flags or "amx_bf16" in flags):
        return False
    capped = not torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    return not capped and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_pays(device: torch.device, encoder_width: int) -> bool:
    """Whether bf16 autocast is the automatic choice for a model on ``device`` (see BF16_MIN_CPU_WIDTH)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return encoder_width >= BF16_MIN_CPU_WIDTH and cpu_has_native_bf16()
    return False
