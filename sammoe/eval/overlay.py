"""Slice overlays for humans and W&B: three orthogonal slices through the target with GT/prediction contours."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from sammoe.errors import DataError
from sammoe.files import write_file

__all__ = ["target_centre", "overlay_slices"]

GT_COLOUR = "#00d000"
PRED_COLOUR = "#ff3030"


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def target_centre(*masks: np.ndarray | None, shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """Voxel index of the centroid of the first non-empty mask; the grid centre when all are empty."""
    for mask in masks:
        if mask is not None and np.any(mask):
            idx = np.argwhere(mask)
            return tuple(int(round(v)) for v in idx.mean(axis=0))  # type: ignore[return-value]
    if shape is None:
        shape = next(np.shape(m) for m in masks if m is not None)
    return tuple(int(s) // 2 for s in shape)  # type: ignore[return-value]


def _window(image: np.ndarray) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)


def overlay_slices(
    image: Any,
    gt: Any | None,
    pred: Any,
    out_png: str | os.PathLike[str] | None = None,
    *,
    centre: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Render the three orthogonal slices through `centre` (default: the GT centroid, else the prediction's,
    else the grid centre) with the ground truth (green) and prediction (red) outlined.

    `image` is a 3D array; `gt` (or None) and `pred` are 3D masks of the same shape. With `spacing_mm` the
    panels keep the physical aspect ratio. Returns the figure as an (H, W, 3) uint8 RGB array (e.g. for
    `wandb.Image`) and also writes it as PNG when `out_png` is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    img = _np(image).astype(np.float32, copy=False)
    p = _np(pred) != 0
    g = None if gt is None else _np(gt) != 0
    if img.ndim != 3:
        raise DataError(f"image must be 3D, got shape {img.shape}.")
    for name, mask in (("pred", p), ("gt", g)):
        if mask is not None and mask.shape != img.shape:
            raise DataError(f"{name} shape {mask.shape} differs from image shape {img.shape}.")
    c = tuple(int(v) for v in centre) if centre is not None else target_centre(g, p, shape=img.shape)
    if len(c) != 3 or not all(0 <= v < s for v, s in zip(c, img.shape)):
        raise DataError(f"centre {c} lies outside the image of shape {img.shape}.")
    sp = np.ones(3) if spacing_mm is None else np.asarray(spacing_mm, dtype=float)
    lo, hi = _window(img)

    fig = Figure(figsize=(10.5, 3.8), dpi=100)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for axis, ax in enumerate(axes):
        take = [slice(None)] * 3
        take[axis] = c[axis]
        rows_ax, cols_ax = [a for a in range(3) if a != axis]
        ax.imshow(
            img[tuple(take)],
            cmap="gray",
            vmin=lo,
            vmax=hi,
            origin="lower",
            aspect=float(sp[rows_ax] / sp[cols_ax]),
            interpolation="nearest",
        )
        for mask, colour in ((g, GT_COLOUR), (p, PRED_COLOUR)):
            if mask is None:
                continue
            plane = mask[tuple(take)]
            if plane.any() and not plane.all():
                ax.contour(
                    plane.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.2, origin="lower"
                )
        ax.set_title(f"axis {axis} = {c[axis]}", fontsize=9)
        ax.set_xlabel(f"axis {cols_ax}", fontsize=8)
        ax.set_ylabel(f"axis {rows_ax}", fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [Line2D([], [], color=PRED_COLOUR, label="prediction")]
    if g is not None:
        handles.insert(0, Line2D([], [], color=GT_COLOUR, label="ground truth"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    canvas.draw()
    rgb = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()
    if out_png is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        write_file(out_png, buf.getvalue())
    return rgb
