"""Slice overlays for humans and W&B: three orthogonal slices through the target with GT/prediction
contours."""

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


CLICK_POSITIVE, CLICK_NEGATIVE = "#2ca02c", "#d62728"
STORED = "ijk"  # the stored array's axes, as slices and ticks name them (a DICOM series: column, row, slice)
# per panel: title, (row axis, column axis), columns flipped?, (left, right) end labels, (bottom, top) labels
_AXIS_VIEWS = (
    ("", (1, 2), False, ("", ""), ("", "")),
    ("", (0, 2), False, ("", ""), ("", "")),
    ("", (0, 1), False, ("", ""), ("", "")),
)
# on a RAS+ grid: rows run to superior (anterior in the axial panel), the patient's right is on the left
_RAS_VIEWS = (
    ("sagittal", (2, 1), True, ("A", "P"), ("I", "S")),
    ("coronal", (2, 0), True, ("R", "L"), ("I", "S")),
    ("axial", (1, 0), True, ("R", "L"), ("P", "A")),
)


def _to_ras(affine: np.ndarray, img, p, g, centre, points):
    """Arrays, centre, spacing and click points on the closest RAS+ axis order (nibabel's orientation)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    shape = img.shape

    def turn(a):
        return None if a is None else nib.orientations.apply_orientation(a, ornt)

    def move(pts):
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        out = np.empty_like(pts)
        for src, (dst, sign) in enumerate(ornt):
            out[:, int(dst)] = pts[:, src] if sign > 0 else shape[src] - 1 - pts[:, src]
        return out

    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_spacing = np.empty(3)
    for src, (dst, _) in enumerate(ornt):
        new_spacing[int(dst)] = spacing[src]
    c = tuple(int(round(v)) for v in move(centre)[0])
    return turn(img), turn(p), turn(g), c, new_spacing, move(points)


def _stored_axes(affine: np.ndarray | None, shape: Sequence[int]) -> list[tuple[int, int, bool]]:
    """Per axis of the drawn arrays (``_to_ras``'s order with an affine): (the stored axis it is, that axis's
    length, reversed?), so that slices and ticks name the voxel indices of the file as stored."""
    if affine is None:
        return [(axis, int(shape[axis]), False) for axis in range(3)]
    import nibabel as nib

    out: list[tuple[int, int, bool]] = [(0, 0, False)] * 3
    for src, (dst, sign) in enumerate(nib.orientations.io_orientation(affine)):
        out[int(dst)] = (src, int(shape[src]), sign < 0)
    return out


def _edges(axis: tuple[int, int, bool]) -> tuple[float, float]:
    """The stored indices at the outer edges of the drawn array's first and last voxel along ``axis``."""
    _, n, reverse = axis
    return (n - 0.5, -0.5) if reverse else (-0.5, n - 0.5)


def overlay_slices(
    image: Any,
    gt: Any | None,
    pred: Any,
    out_png: str | os.PathLike[str] | None = None,
    *,
    centre: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    title: str | None = None,
    affine: Any = None,
    clicks: Sequence[tuple[Sequence[float], bool]] = (),
) -> np.ndarray:
    """Render the three orthogonal slices through `centre` (default: the GT centroid, else the prediction's,
    else the grid centre) with the ground truth (green) and prediction (red) outlined.

    `image` is a 3D array; `gt` (or None) and `pred` are 3D masks of the same shape. With `spacing_mm` the
    panels keep the physical aspect ratio. With the voxel -> RAS mm `affine` the panels are sagittal, coronal
    and axial in the radiological convention (patient right on the screen's left, anterior / superior up) and
    `clicks` ((voxel, positive) pairs) are drawn: positive as green +, negative as red x. Slices and ticks
    name voxel indices of the array as given (i, j, k: a file's stored order), whatever the drawing's
    orientation; the legend has a row of its own below the panels. Returns the figure as an (H, W, 3) uint8
    RGB array (e.g. for `wandb.Image`) and also writes it as PNG when `out_png` is given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = overlay_figure(
        image, gt, pred, centre=centre, spacing_mm=spacing_mm, title=title, affine=affine, clicks=clicks
    )
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.array(canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()
    if out_png is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        write_file(out_png, buf.getvalue())
    return rgb


def overlay_figure(
    image: Any,
    gt: Any | None,
    pred: Any,
    *,
    centre: Sequence[int] | None = None,
    spacing_mm: Sequence[float] | None = None,
    title: str | None = None,
    affine: Any = None,
    clicks: Sequence[tuple[Sequence[float], bool]] = (),
) -> Any:
    """The matplotlib ``Figure`` ``overlay_slices`` renders (same arguments)."""
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
    stored_centre, stored = c, _stored_axes(None if affine is None else np.asarray(affine, float), img.shape)
    sp = np.ones(3) if spacing_mm is None else np.asarray(spacing_mm, dtype=float)
    views = _AXIS_VIEWS
    given = np.asarray([pt for pt, _ in clicks], dtype=np.float64).reshape(-1, 3)  # stored indices
    points, signs = given, [bool(positive) for _, positive in clicks]
    if affine is not None:
        img, p, g, c, sp, points = _to_ras(np.asarray(affine, dtype=np.float64), img, p, g, c, points)
        views = _RAS_VIEWS
    lo, hi = _window(img)

    fig = Figure(figsize=(10.5, 3.8), dpi=100, layout="constrained")  # room for every label and the legend
    axes = fig.subplots(1, 3)
    for axis, ax in enumerate(axes):
        name, (rows_ax, cols_ax), flip_cols, (left, right), (bottom, top) = views[axis]
        take = [slice(None)] * 3
        take[axis] = c[axis]
        flip_plane = rows_ax > cols_ax  # a slice keeps the remaining axes in order: transpose to (rows, cols)
        (x0, x1), (y0, y1) = _edges(stored[cols_ax]), _edges(stored[rows_ax])
        extent = (x0, x1, y0, y1)  # data coordinates are stored voxel indices
        plane = img[tuple(take)].T if flip_plane else img[tuple(take)]
        ax.imshow(
            plane, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, interpolation="nearest"
        )
        ax.set_aspect(float(sp[rows_ax] / sp[cols_ax]))
        for mask, colour in ((g, GT_COLOUR), (p, PRED_COLOUR)):
            if mask is None:
                continue
            cut = mask[tuple(take)].T if flip_plane else mask[tuple(take)]
            if cut.any() and not cut.all():
                ax.contour(
                    cut.astype(np.float32),
                    levels=[0.5],
                    colors=colour,
                    linewidths=1.2,
                    origin="lower",
                    extent=extent,
                )
        for point, positive, at in zip(points, signs, given):
            if abs(point[axis] - c[axis]) <= 1.0:  # on this slice (or the next): drawn
                marker, colour = ("+", CLICK_POSITIVE) if positive else ("x", CLICK_NEGATIVE)
                col, row = at[stored[cols_ax][0]], at[stored[rows_ax][0]]
                ax.plot(col, row, marker, color=colour, markersize=9, markeredgewidth=2)
        ax.set_xlim((x1, x0) if flip_cols else (x0, x1))  # the drawn array's first voxel: left, bottom
        ax.set_ylim(y0, y1)
        src = stored[axis][0]
        ax.set_title(f"{name + ', ' if name else ''}slice {STORED[src]} = {stored_centre[src]}", fontsize=9)
        ax.set_xlabel(_axis_label(left, right, STORED[stored[cols_ax][0]]), fontsize=8)
        ax.set_ylabel(_axis_label(bottom, top, STORED[stored[rows_ax][0]]), fontsize=8)
        ax.tick_params(labelsize=7)
    handles = [Line2D([], [], color=PRED_COLOUR, label="prediction")]
    if len(points):
        handles.append(Line2D([], [], color=CLICK_POSITIVE, marker="+", ls="", label="positive click"))
        if not all(signs):
            handles.append(Line2D([], [], color=CLICK_NEGATIVE, marker="x", ls="", label="negative click"))
    if g is not None:
        handles.insert(0, Line2D([], [], color=GT_COLOUR, label="ground truth"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _axis_label(low: str, high: str, index: str) -> str:
    """An axis's label: its anatomical directions (low end first) and the stored index its ticks count."""
    return f"{low}  <->  {high}   (index {index})" if low else f"index {index}"
