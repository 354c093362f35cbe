"""Growing a target over neighbouring windows when its mask reaches a face of its crop (the data layer's
sliding window, ``interact.sliding_window``), decoded with the target's own clicks and expert."""

from __future__ import annotations

import numpy as np

from sammoe.data.clicks_file import round_voxel
from sammoe.data.lazy_resample import LazyResampled
from sammoe.data.preprocess import Resampled, Roi
from sammoe.inference.decoding import ClickDecoder
from sammoe.inference.roi_cache import RoiCache, TargetState
from sammoe.interact.sliding_window import deepest_prior_voxel, grow_windows


def grow_over_windows(
    state: TargetState,
    rois: RoiCache,
    decoding: ClickDecoder,
    grid: Resampled | LazyResampled,
    max_windows: int,
) -> tuple[np.ndarray, Roi]:
    """Grow a target that reaches its crop's faces over neighbouring windows (data-layer sliding window).

    Windows other than the primary one get the target's clicks that fall inside them and, when none of
    those is positive, a positive click at the deepest foreground voxel that earlier windows predicted in
    the overlap. Returns the blended probabilities on the visited windows' box of the resampled grid and
    the ``Roi`` of that box (``results.on_input_grid`` maps them inside its footprint).
    """
    seen: list[tuple[Roi, np.ndarray]] = []
    primary = tuple(int(v) for v in state.entry.roi.start)

    def predict(roi: Roi) -> np.ndarray:
        key = tuple(int(v) for v in roi.start)
        if key == primary:
            prob = state.roi_prob
        else:
            entry = rois.get(key)
            pts = round_voxel(entry.roi.input_to_roi(state.clicks))
            inside = entry.roi.contains(pts)
            points, labels = pts[inside].astype(np.float32), state.labels[inside]
            if not np.any(labels == 1):
                seed = deepest_prior_voxel(entry.roi, seen)
                if seed is None:
                    prob = np.zeros((decoding.size,) * 3, dtype=np.float32)
                    seen.append((entry.roi, prob))
                    return prob
                points = np.concatenate([seed[None], points])
                labels = np.concatenate([[1], labels])
            # The target's expert, not a new gate decision on a window it merely overlaps.
            routed = decoding.routed([state])  # a plain SamMed3D has no routing to keep
            logits, *_ = decoding.decode(entry, points[None], labels[None], decoding.zeros_low(1), *routed)
            prob = decoding.upsample(logits)[0]
        seen.append((roi, prob))
        return prob

    # The helper centres its first window on this voxel: give it the primary ROI's centre.
    centre = state.entry.roi.roi_to_input(np.asarray(state.entry.roi.size, dtype=np.float64) // 2)
    blended, box = grow_windows(rois.pre, grid, centre, predict, max_windows=max_windows)
    state.windows = len(seen)
    return blended, box
