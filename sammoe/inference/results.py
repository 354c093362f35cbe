"""A decoded target's result on the input grid: its crop's probabilities (or, when the mask reaches a face of
its crop, the blended probabilities of the neighbouring windows it grew over) mapped back inside their
footprint only (the rest of the grid is never touched); the routing it took and its stability."""

from __future__ import annotations

from typing import Any

import numpy as np

from sammoe.data.clicks_file import round_voxel
from sammoe.data.inverse import linear_in_box
from sammoe.data.preprocess import Roi
from sammoe.inference.decoding import ClickDecoder, stability_score
from sammoe.inference.roi_cache import RoiCache, TargetState
from sammoe.inference.targets import TargetResult
from sammoe.inference.windows import grow_over_windows
from sammoe.interact.sliding_window import touches_face


def on_input_grid(roi: Roi, prob: np.ndarray, want_probs: bool) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """(mask, probability or None, box): a crop's (or a windows' box's) probabilities on the input grid,
    mapped and thresholded inside its footprint only (zero pages elsewhere)."""
    mask = np.zeros(roi.orig_shape, dtype=bool)
    full = np.zeros(roi.orig_shape, dtype=np.float32) if want_probs else None
    placed = linear_in_box(roi, prob)
    if placed is None:
        return mask, full, None
    footprint, values = placed
    box = footprint.slices
    mask[box] = values > 0.5
    if full is not None:
        full[box] = values
    return mask, full, box


def finish_target(
    state: TargetState,
    *,
    rois: RoiCache,
    decoding: ClickDecoder,
    grid: Any,
    expert_names: list[str],
    routed_by: str | None,
    want_probs: bool,
    sliding_window: bool,
    max_windows: int,
) -> None:
    """Set ``state.result`` from its low-res logits; the crop's probabilities exist only meanwhile (kept per
    target they would cost a crop of floats each: a thousand targets, gigabytes)."""
    state.roi_prob = decoding.upsample(state.low)[0]
    try:
        windows, roi, prob = 1, state.entry.roi, state.roi_prob
        if sliding_window and touches_face(state.roi_prob):
            prob, roi = grow_over_windows(state, rois, decoding, grid, max_windows)
            windows = state.windows
        mask, prob, box = on_input_grid(roi, prob, want_probs)
        routing = None
        if state.probs is not None:
            routing = {n: round(float(p), 4) for n, p in zip(expert_names, state.probs)}
        state.result = TargetResult(
            name=state.name,
            value=state.value,
            mask=mask,
            probability=prob,
            expert=expert_names[state.route] if state.route >= 0 else "soft",
            routing_probabilities=routing,
            iou=state.iou,
            clicks=len(state.clicks),
            roi=state.entry.index,
            windows=windows,
            click=tuple(int(v) for v in round_voxel(state.clicks[0])),
            routed_by=routed_by,
            stability=stability_score(state.roi_prob),
            box=box,
        )
    finally:
        state.roi_prob = None
