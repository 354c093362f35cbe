"""Sliding window for targets larger than one crop: click-centred windows that grow only where the target
touches a window face, blended with Gaussian weights and mapped back to the original grid.

``sliding_window(pre, volume, click_vox, predict, ...)`` drives any model through
``predict(roi) -> probabilities`` (``grow_windows`` gives the blended probabilities on the windows' box);
the Predictor (``sammoe.inference.predictor``) passes its cached-embedding decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sammoe.data.inverse import linear_in_box
from sammoe.data.io import Volume
from sammoe.data.preprocess import Preprocessor, Resampled, Roi, Triple


def _gaussian_weights(size: Triple, sigma_scale: float = 0.125) -> np.ndarray:
    axes = []
    for s in size:
        x = np.arange(s) - (s - 1) / 2.0
        g = np.exp(-0.5 * (x / max(s * sigma_scale, 1e-6)) ** 2)
        axes.append(g / g.max())
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return np.maximum(w, 1e-3).astype(np.float32)


def _click_component(fg: np.ndarray, click: np.ndarray) -> np.ndarray | None:
    """The connected component of ``fg`` that contains ``click`` (float voxel indices into ``fg``), or, when
    the click voxel is background, the component holding the foreground voxel nearest to it; None when ``fg``
    has no foreground."""
    from scipy import ndimage

    # 26-connectivity: the thresholded, resampled prediction of a thin or oblique target (vessel, duct, thin
    # cortex) is often connected only through edges/corners; 6-connectivity would cut it and stop the growth
    # early (lost target), whereas 26 only lets a false positive in when it actually touches the target.
    labels, count = ndimage.label(fg, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None
    idx = np.floor(click + 0.5).astype(np.int64)
    if np.all(idx >= 0) and np.all(idx < labels.shape) and labels[tuple(idx)]:
        keep = labels[tuple(idx)]
    else:  # nearest foreground voxel, without materialising the coordinates of every foreground voxel
        axes = [(np.arange(n, dtype=np.float32) - np.float32(c)) ** 2 for n, c in zip(labels.shape, click)]
        dist = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]
        dist[labels == 0] = np.inf
        keep = labels.flat[int(np.argmin(dist))]
    return labels == keep


def _face_neighbours(
    windows: list[tuple[tuple[int, int, int], np.ndarray]],
    component: np.ndarray,
    lo: np.ndarray,
    start0: np.ndarray,
    step: np.ndarray,
    size: np.ndarray,
    shape: np.ndarray,
    visited: set[tuple[int, int, int]],
) -> list[tuple[int, int, int]]:
    """Offsets of the unvisited neighbours of the visited ``windows`` ``(offset, start)`` across every face
    that ``component`` (a mask of the region starting at ``lo`` on the resampled grid) touches, in visiting
    order (window, then axis, then -/+), without repeats."""
    out: list[tuple[int, int, int]] = []
    for offset, start in windows:
        # the window clipped to the volume, in region coordinates
        box = [
            slice(max(int(st), 0) - int(o), min(int(st + s), int(n)) - int(o))
            for st, s, n, o in zip(start, size, shape, lo)
        ]
        for axis in range(3):
            for direction in (-1, 1):
                # skip when this window already covers the volume edge in that direction
                if (direction < 0 and start[axis] <= 0) or (
                    direction > 0 and start[axis] + size[axis] >= shape[axis]
                ):
                    continue
                nxt = list(offset)
                nxt[axis] += direction
                nstart = start0[axis] + nxt[axis] * step[axis]
                if nstart + size[axis] <= 0 or nstart >= shape[axis]:
                    continue  # the neighbour would lie outside the volume
                face = list(box)
                at = int(start[axis]) if direction < 0 else int(start[axis] + size[axis] - 1)
                face[axis] = slice(at - int(lo[axis]), at - int(lo[axis]) + 1)
                key = (nxt[0], nxt[1], nxt[2])
                if key not in visited and key not in out and component[tuple(face)].any():
                    out.append(key)
    return out


def touches_face(prob: np.ndarray) -> bool:
    """Whether a ROI's mask (probability > 0.5) reaches any face of the crop: the target may continue
    outside."""
    fg = prob > 0.5
    return any(np.take(fg, face, axis=a).any() for a in range(3) for face in (0, -1))


def grow_windows(
    pre: Preprocessor,
    volume: Volume | Resampled,
    click_vox: Any,
    predict: Callable[[Roi], Any],
    *,
    label: Volume | np.ndarray | None = None,
    overlap: float = 0.5,
    max_windows: int = 27,
    threshold: float = 0.5,
) -> tuple[np.ndarray, Roi]:
    """The windows of ``sliding_window``, blended: (probabilities on the resampled grid inside the visited
    windows' box, a ``Roi`` of that box). The box has one voxel of zeros around the windows where the grid
    goes on, so mapping it to the input grid (``data.inverse.linear_in_box``) gives exactly what mapping the
    whole resampled grid gives, at the cost of the box: a refinement never touches the rest of the scan."""
    res = pre.resample(volume, label) if isinstance(volume, Volume) else volume  # Resampled or LazyResampled
    size = np.asarray(pre.crop_size)
    step = np.maximum(np.round(size * (1.0 - overlap)).astype(np.int64), 1)
    click = np.asarray(res.input_to_ras(click_vox), dtype=np.float64).reshape(3)
    start0 = pre.start_for(res, center_ras=click)
    shape = np.asarray(res.shape)
    acc = np.zeros(res.shape, dtype=np.float32)
    wsum = np.zeros(res.shape, dtype=np.float32)
    weights = _gaussian_weights(pre.crop_size)
    windows: list[tuple[tuple[int, int, int], np.ndarray]] = []
    visited: set[tuple[int, int, int]] = set()
    frontier: list[tuple[int, int, int]] = [(0, 0, 0)]
    done = 0
    # Breadth first, one ring of windows at a time: the target is re-labelled after each ring, not after each
    # window (with 128-voxel crops a labelling pass over the visited region takes ~0.2 s on a CPU).
    while frontier and done < max_windows:
        for offset in frontier[: max_windows - done]:
            start = start0 + np.asarray(offset) * step
            roi = pre.crop(res, start=start)
            roi.meta["window"] = offset
            prob = predict(roi)
            if hasattr(prob, "detach"):
                prob = prob.detach().float().cpu().numpy()
            prob = np.asarray(prob, dtype=np.float32).reshape(tuple(size))
            done += 1
            windows.append((offset, start))
            visited.add(offset)
            src, dst = [], []
            for st, s, n in zip(start, size, shape):
                lo, hi = max(int(st), 0), min(int(st + s), int(n))
                src.append(slice(lo - int(st), hi - int(st)))
                dst.append(slice(lo, hi))
            if all(d.stop > d.start for d in dst):
                acc[tuple(dst)] += prob[tuple(src)] * weights[tuple(src)]
                wsum[tuple(dst)] += weights[tuple(src)]
        if done >= max_windows:
            break
        lo_box, hi_box = _windows_box(windows, size, shape)
        if np.any(hi_box <= lo_box):
            break  # the windows miss the volume (a click far outside it)
        # the target so far, within the bounding box of the visited windows (the rest of the grid is empty)
        fg = _blended(acc, wsum, lo_box, hi_box) > threshold
        component = _click_component(fg, click - lo_box)
        if component is None:
            break
        frontier = _face_neighbours(windows, component, lo_box, start0, step, size, shape, visited)
    lo_box, hi_box = _windows_box(windows, size, shape)
    lo_box, hi_box = np.maximum(lo_box - 1, 0), np.minimum(np.maximum(hi_box, lo_box) + 1, shape)
    blended = _blended(acc, wsum, lo_box, hi_box)
    box = Roi(
        image=torch.empty(0),
        start=lo_box.astype(np.int64),
        size=tuple(int(v) for v in hi_box - lo_box),
        ras_affine=res.affine,
        ras_shape=res.shape,
        orig_affine=res.orig_affine,
        orig_shape=res.orig_shape,
        meta={"windows": done},
    )
    return blended, box


def _blended(acc: np.ndarray, wsum: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The weighted mean of the windows' predictions inside the box ``lo``..``hi`` (0 where none reached)."""
    region = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    part = wsum[region]
    return np.divide(acc[region], part, out=np.zeros_like(part), where=part > 0)


def _windows_box(windows, size: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The visited windows' bounding box on the resampled grid, clipped to it (lo, hi)."""
    starts = np.stack([w[1] for w in windows])
    return np.clip(starts.min(0), 0, shape), np.clip(starts.max(0) + size, 0, shape)


def sliding_window(
    pre: Preprocessor,
    volume: Volume | Resampled,
    click_vox: Any,
    predict: Callable[[Roi], Any],
    *,
    label: Volume | np.ndarray | None = None,
    overlap: float = 0.5,
    max_windows: int = 27,
    threshold: float = 0.5,
) -> np.ndarray:
    """Segment a target larger than one crop: click-centred windows that grow where the target touches a
    window face, blended back and mapped onto the original grid.

    The first window is centred on ``click_vox`` (input voxel indices). Windows are visited breadth first, one
    ring at a time; after each ring the predictions so far are blended and thresholded (> ``threshold``), and
    the connected component (26-connectivity) holding the click is taken as the target (the component nearest
    to the click when the click voxel is background). Wherever that component reaches a face of a visited
    window, the neighbouring window shifted by ``(1 - overlap) * crop`` in that direction joins the next ring
    (at most ``max_windows`` windows in all). Foreground not connected to the target (false positives on an
    unfamiliar scan) therefore never adds windows, but it stays in the returned mask where the visited windows
    predict it. ``predict(roi)`` returns foreground probabilities of shape ``roi.size`` (numpy or torch);
    windows are blended with Gaussian weights on the resampled grid, mapped to the original grid (linear) and
    thresholded. ``label`` (optional) is cropped into each ``roi.label`` (oracle tests, evaluation).
    Returns a uint8 mask of the original shape (``grow_windows`` gives the blended probabilities).
    """
    blended, box = grow_windows(
        pre,
        volume,
        click_vox,
        predict,
        label=label,
        overlap=overlap,
        max_windows=max_windows,
        threshold=threshold,
    )
    mask = np.zeros(box.orig_shape, dtype=np.uint8)
    placed = linear_in_box(box, blended)
    if placed is not None:  # probabilities to the input grid first, then the threshold
        footprint, values = placed
        mask[footprint.slices] = values > threshold
    return mask


def deepest_prior_voxel(roi: Roi, seen: list[tuple[Roi, np.ndarray]]) -> np.ndarray | None:
    """Where a window with no positive click of its own gets one: the deepest voxel (distance transform) of
    the foreground that earlier windows ``seen`` ((roi, probabilities)) predicted where they overlap ``roi``;
    None when they predicted none there. ROI voxel indices, float32 (3,)."""

    size = np.asarray(roi.size)
    prior = np.zeros(tuple(size), dtype=np.float32)
    for other, prob in seen:
        off = np.asarray(other.start) - np.asarray(roi.start)
        lo, hi = np.maximum(off, 0), np.minimum(off + size, size)
        if np.any(hi <= lo):
            continue
        dst = tuple(slice(a, b) for a, b in zip(lo, hi))
        src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, off))
        prior[dst] = np.maximum(prior[dst], prob[src])
    fg = prior > 0.5
    if not fg.any():
        return None
    return deepest_voxel(fg)


def deepest_voxel(fg: np.ndarray) -> np.ndarray:
    """The first (C order) voxel of ``fg`` farthest from its background: the distance transform computed on
    the foreground's box grown by one voxel only. Exact: a background voxel beyond that box is never nearer
    than its projection onto the box's outer layer, which is background too."""
    from scipy import ndimage

    where = np.nonzero(fg)
    lo = [max(int(i.min()) - 1, 0) for i in where]
    hi = [min(int(i.max()) + 2, n) for i, n in zip(where, fg.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    depth = ndimage.distance_transform_edt(fg[box])
    local = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return np.asarray([a + int(v) for a, v in zip(lo, local)], dtype=np.float32)
