"""Which torch device a user's ``--device`` names, refused in one line when this machine does not have it."""

from __future__ import annotations

import torch

from sammoe.errors import ConfigError


def usable_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device this machine has; ConfigError (one line, no torch list) otherwise."""
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    try:
        parsed = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        parsed = None
    if (
        parsed is not None
        and (parsed.type == "cpu" or available.get(parsed.type))
        and (parsed.type != "cuda" or parsed.index is None or parsed.index < torch.cuda.device_count())
    ):
        return parsed
    have = ", ".join(["cpu", *(f"{k} (or {k}:N)" if k == "cuda" else k for k, ok in available.items() if ok)])
    raise ConfigError(f"device {str(device)!r} is not available here; use auto or one of: {have}")
