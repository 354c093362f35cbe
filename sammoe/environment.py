"""Settings a user gives through environment variables, read and checked in one place: a bad value is one
ConfigError naming the variable, what it must be and its default."""

from __future__ import annotations

import math
import os

from sammoe.errors import ConfigError


def seconds_from_env(name: str, default: float) -> float:
    """A positive, finite number of seconds from ``name``; ``default`` when it is unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{name}={raw!r} is not a number of seconds; set it above 0 or unset it (default {default:g})"
        )
    return value
