"""The Predictor's arguments, checked where they enter: a wrong type or value is one ConfigError (or
DataError for data) naming the argument, instead of an AttributeError from deep inside."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from sammoe.errors import ConfigError, DataError
from sammoe.inference.targets import Target


def number_option(
    name: str, value: Any, low: float, high: float | None, expected: str, integer: bool = False
) -> float:
    """A Predictor option checked at the public boundary: a real number (not a bool) in [low, high]."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    ok = isinstance(value, kinds) and not isinstance(value, (bool, np.bool_))
    if ok and np.isfinite(value) and value >= low and (high is None or value <= high):
        return float(value)
    raise ConfigError(f"{name}={value!r}: expected {expected}")


def expert_names_argument(experts: Any) -> list[str] | str | None:
    """``experts`` of ``Predictor.load``: None, one comma-separated str, or names (read once)."""
    if isinstance(experts, Iterable) and not isinstance(experts, str):
        experts = list(experts)
    names_ok = isinstance(experts, list) and all(isinstance(e, str) for e in experts)
    if experts is not None and not isinstance(experts, str) and not names_ok:
        raise ConfigError(
            f"experts={experts!r}: give expert names, a list of str or one comma-separated str "
            "(None: every installed expert)"
        )
    return experts


def check_image_arguments(image: Any, affine: Any) -> None:
    """``set_image``: an affine is a 4x4 matrix of numbers; an array image is not empty."""
    if affine is not None:
        try:
            matrix = np.asarray(affine, dtype=np.float64)
        except (TypeError, ValueError):
            matrix = None
        if matrix is None or matrix.shape != (4, 4):
            raise ConfigError(
                "affine: expected a 4x4 voxel -> RAS mm matrix (numbers), "
                f"got {' '.join(str(affine).split())[:60]}; "
                "pass np.eye(4) scaled by the spacing, or the image's header affine"
            )
    if isinstance(image, np.ndarray) and image.size == 0:
        raise DataError(f"image: the array of shape {image.shape} is empty; give a 3D array with voxels")


def targets_argument(targets: Any) -> list[Target]:
    """``predict``'s targets: one Target or an iterable of them, as a list."""
    if isinstance(targets, Target):
        return [targets]
    if isinstance(targets, (str, bytes, dict)) or not isinstance(targets, Iterable):
        raise ConfigError(
            f"targets: expected a Target or a list of Targets, got {type(targets).__name__}; "
            "write Target([[x, y, z]], name=...)"
        )
    return list(targets)


def check_target_key(target: Any, names: list[str]) -> None:
    """A target named by its index (int, from 0) or its name (str)."""
    if isinstance(target, (bool, np.bool_)) or not isinstance(target, (str, int, np.integer)):
        raise ConfigError(
            f"target={target!r}: give a target's index (int, from 0) or its name (str); "
            f"targets: {', '.join(names)}"
        )
