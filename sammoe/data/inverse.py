"""A prediction on a crop's grid, mapped back onto the input image's grid (the inverse of preprocessing).

A 128^3 crop covers a small box of the input grid (its footprint); only that box is sampled. ``invert`` and
``invert_probability`` return whole-grid arrays (zero outside the box); ``nearest_in_box`` and
``linear_in_box`` return the box alone with its place, so that work after a click costs the crop's size,
not the scan's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sammoe.data.block_sampling import sample_linear, sample_nearest
from sammoe.data.preprocess import Roi, apply_affine


@dataclass(frozen=True)
class Footprint:
    """The box ``lo`` (inclusive) .. ``hi`` (exclusive) of the input grid that a crop covers."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(b - a for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]


def as_block(pred: Any) -> np.ndarray:
    """A ROI prediction as a 3D numpy array (leading 1-dims dropped)."""
    if hasattr(pred, "detach"):
        pred = pred.detach().cpu().numpy()
    pred = np.asarray(pred)
    while pred.ndim > 3 and pred.shape[0] == 1:
        pred = pred[0]
    if pred.ndim != 3:
        raise ValueError(f"prediction must be 3D (optionally with leading 1-dims), got {pred.shape}")
    return pred


def _window(roi: Roi, block: Sequence[int]) -> tuple[Footprint, np.ndarray, np.ndarray] | None:
    """(footprint, input -> ROI index matrix, sampling offset of the box); None when the ROI misses the
    grid."""
    matrix = np.linalg.inv(roi.affine) @ roi.orig_affine
    edges = [(-0.5, n - 0.5) for n in block[:3]]
    corners = np.array([[a, b, c] for a in edges[0] for b in edges[1] for c in edges[2]])
    back = apply_affine(np.linalg.inv(matrix), corners)
    lo = np.clip(np.floor(back.min(0)).astype(int) - 1, 0, roi.orig_shape)
    hi = np.clip(np.ceil(back.max(0)).astype(int) + 2, 0, roi.orig_shape)
    if np.any(hi <= lo):
        return None
    box = Footprint(tuple(int(v) for v in lo), tuple(int(v) for v in hi))
    return box, matrix, matrix[:3, :3] @ lo + matrix[:3, 3]


def nearest_in_box(roi: Roi, pred: Any) -> tuple[Footprint, np.ndarray] | None:
    """A ROI-grid mask on its footprint of the input grid, nearest-neighbour (bool/int values kept; floats are
    probabilities, thresholded at 0.5 first); None when the crop misses the grid."""
    pred = as_block(pred)
    if np.issubdtype(pred.dtype, np.floating):
        pred = pred > 0.5
    top = int(pred.max()) if pred.size else 0
    pred = pred.astype(np.uint8 if top < 256 else np.uint16)
    window = _window(roi, pred.shape)
    if window is None:
        return None
    box, matrix, offset = window
    if top == 0:
        return box, np.zeros(box.shape, dtype=pred.dtype)
    return box, sample_nearest(pred, matrix[:3, :3], offset, np.asarray(box.shape))


def linear_in_box(roi: Roi, prob: Any) -> tuple[Footprint, np.ndarray] | None:
    """ROI-grid probabilities on the crop's footprint of the input grid, linearly interpolated (float32):
    threshold after mapping, as nnU-Net does, so an edge between input voxels lands where the probability
    crosses 0.5 instead of on the nearest ROI voxel's side. None when the crop misses the grid."""
    prob = np.asarray(as_block(prob), dtype=np.float32)
    window = _window(roi, prob.shape)
    if window is None:
        return None
    box, matrix, offset = window
    if not prob.any():
        return box, np.zeros(box.shape, dtype=np.float32)
    return box, sample_linear(prob, matrix[:3, :3], offset, np.asarray(box.shape))


def invert(roi: Roi, pred: Any) -> np.ndarray:
    """A ROI-grid mask on the whole input grid (shape ``roi.orig_shape``), nearest-neighbour, 0 outside.

    ``pred``: (S, S, S), (1, S, S, S) or (1, 1, S, S, S), numpy or torch. Bool/integer masks keep their values
    (uint8/uint16 result); floats are read as probabilities and thresholded at 0.5 first (to map
    probabilities, use ``invert_probability``).
    """
    block = as_block(pred)
    top = int(block.max()) if block.size and not np.issubdtype(block.dtype, np.floating) else 1
    out = np.zeros(roi.orig_shape, dtype=np.uint8 if top < 256 else np.uint16)
    placed = nearest_in_box(roi, block)
    if placed is not None:
        box, values = placed
        out[box.slices] = values
    return out


def invert_probability(roi: Roi, prob: Any) -> np.ndarray:
    """ROI-grid probabilities on the whole input grid, linearly interpolated (float32, 0 outside the crop)."""
    out = np.zeros(roi.orig_shape, dtype=np.float32)
    placed = linear_in_box(roi, prob)
    if placed is not None:
        box, values = placed
        out[box.slices] = values
    return out
