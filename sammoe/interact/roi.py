"""The ROI policy: where the crop for a target goes, shared by training, evaluation and the Predictor.

``click`` (the default everywhere): the crop is centred on the target's first positive click, which is all a
user gives. Training draws that click uniformly over the target's voxels (the official first click) and
may shift the crop by a small jitter; it never places the crop from the ground truth's extent.
``bbox``: the official SAM-Med3D protocol, a crop around the ground truth's bounding box. It leaks the
target's location into the crop, so it is kept only to compare with published numbers.

Public API
----------
- ``CROP_MODES``: ``("click", "bbox")``; ``check_crop_mode(mode)``.
- ``round_voxel(points)``: float voxel coordinates -> integer indices, half-way cases rounded up robustly.
- ``click_centred_start(pre, res, click_input)``: ROI start on the resampled grid for a click given in input
  voxel indices (what ``Predictor`` and the click-centred evaluation call).
- ``draw_click(mask, rng)``: a voxel drawn uniformly from a boolean mask (None when empty).
- ``seeded_first_click(mask, seed)``: the evaluation protocol's first click on a mask (None when empty).
- ``training_roi(pre, res, value, bbox, rng, jitter=0, flip_axes=(), click=None) -> (Roi, click_roi)``: the
  training crop of one target, centred on a random voxel of class ``value`` (found within its bounding box)
  or on ``click``.
- ``border_click(label, task_values, host_values, radius, rng)``: a voxel of a host class (e.g. the liver)
  within ``radius`` voxels of a task target (the lesion inside it), and its class: the hard negatives of a
  router.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sammoe.data.clicks_file import round_voxel
from sammoe.data.preprocess import Preprocessor, Resampled, Roi

CROP_MODES = ("click", "bbox")


def check_crop_mode(mode: str) -> str:
    if mode not in CROP_MODES:
        raise ValueError(f"crop must be one of {', '.join(CROP_MODES)}, got {mode!r}")
    return mode


def click_centred_start(pre: Preprocessor, res: Resampled, click_input: Any) -> np.ndarray:
    """ROI start (resampled grid) of the crop centred on ``click_input`` (input voxel indices (3,))."""
    centre = round_voxel(res.input_to_ras(np.asarray(click_input, dtype=np.float64).reshape(3)))
    return pre.start_for(res, center_ras=centre)


def draw_click(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """Indices (3,) of a voxel drawn uniformly from ``mask``; None when it is empty."""
    flat = np.flatnonzero(mask)
    if flat.size == 0:
        return None
    return np.asarray(np.unravel_index(int(flat[rng.integers(flat.size)]), mask.shape), dtype=np.int64)


def seeded_first_click(mask: np.ndarray, seed: int) -> np.ndarray | None:
    """The evaluation protocol's first click on ``mask`` (any grid): a voxel drawn uniformly with a torch
    generator seeded ``seed`` (official: 233 per target), the first draw of the evaluation loops.
    Integer indices (3,), or None for an empty mask."""
    import torch

    from sammoe.data.clicks import next_click_from_error

    gt = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None]
    generator = torch.Generator().manual_seed(int(seed))
    coords, labels = next_click_from_error(torch.zeros_like(gt), gt, generator)
    if int(labels[0, 0]) != 1:
        return None
    return coords[0, 0].numpy().astype(np.int64)


def training_roi(
    pre: Preprocessor,
    res: Resampled,
    value: int,
    bbox: tuple[Sequence[int], Sequence[int]] | None,
    rng: np.random.Generator,
    jitter: int = 0,
    flip_axes: Sequence[int] = (),
    click: np.ndarray | None = None,
) -> tuple[Roi, np.ndarray]:
    """A click-centred training crop of class ``value``: the click is uniform over the class's voxels on the
    resampled grid (or ``click``, a voxel of that grid drawn elsewhere, e.g. ``border_click``); the crop
    centre is that click shifted by up to ``jitter`` voxels per axis. ``bbox`` only limits the search for the
    class's voxels (a memory-mapped label is read there only); None reads it all.
    Returns the ROI and the click in ROI voxel indices (after ``flip_axes``)."""
    if click is None:
        if bbox is None:
            lo, hi = np.zeros(3, dtype=np.int64), np.asarray(res.shape)
        else:
            lo, hi = np.asarray(bbox[0]), np.asarray(bbox[1])
        region = np.asarray(res.label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
        local = draw_click(region == value, rng)
        if local is None:
            raise ValueError(f"class {value} has no voxel in the given region")
        click = local + lo
    click = np.asarray(click, dtype=np.int64)
    shift = rng.integers(-jitter, jitter + 1, size=3) if jitter > 0 else np.zeros(3, dtype=np.int64)
    start = pre.start_for(res, center_ras=click + shift)
    roi = pre.crop(res, start=start, label_value=value, flip_axes=flip_axes)
    click_roi = (click - start).astype(np.float32)
    for axis in flip_axes:
        click_roi[axis] = roi.size[axis] - 1 - click_roi[axis]
    return roi, click_roi


def border_click(
    label: np.ndarray,
    task_values: Sequence[int],
    host_values: Sequence[int],
    radius: float,
    rng: np.random.Generator,
    task_boxes: Sequence[tuple[Sequence[int], Sequence[int]]] = (),
) -> tuple[np.ndarray, int] | None:
    """A voxel drawn uniformly among the voxels of ``host_values`` within ``radius`` voxels of a voxel of
    ``task_values``, and its class; any host voxel when none lies that close (a case without the task
    target); None without host voxels. Such clicks (the liver right beside a lesion) are the negatives a
    router confuses most, and a uniform click over a large organ almost never lands there. ``task_boxes``
    ((lo, hi) of the task classes' voxels) limit the search to those boxes grown by ``radius`` (a
    memory-mapped label is read there only); empty: the whole label."""
    from scipy import ndimage

    shape = np.asarray(label.shape)
    if task_boxes:
        grow = int(np.ceil(radius))
        lo = np.maximum(np.min([b[0] for b in task_boxes], axis=0) - grow, 0).astype(np.int64)
        hi = np.minimum(np.max([b[1] for b in task_boxes], axis=0) + grow, shape).astype(np.int64)
    else:
        lo, hi = np.zeros(3, dtype=np.int64), shape.astype(np.int64)
    window = np.asarray(label[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]])
    task = np.isin(window, np.asarray(task_values))
    if task.any():
        near = np.isin(window, np.asarray(host_values)) & (ndimage.distance_transform_edt(~task) <= radius)
        click = draw_click(near, rng)
        if click is not None:
            click = click + lo
            return click, int(label[tuple(click)])
    whole = window if not task_boxes else np.asarray(label)  # the window is the whole label without boxes
    click = draw_click(np.isin(whole, np.asarray(host_values)), rng)
    return None if click is None else (click, int(whole[tuple(click)]))
