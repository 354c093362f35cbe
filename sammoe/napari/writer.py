"""The npe2 labels writer: a label map on the source image's grid, plus its clicks.

NIfTI, 3D Slicer ``.seg.nrrd`` or, for an image read from a DICOM series, DICOM-SEG, by the extension, through
the same writer as ``sammoe segment`` (``export``). Beside ``seg.nii.gz`` it writes ``seg.clicks.json``: the
targets' clicks in stored voxel indices, their names and, under ``results``, the expert that segmented each
one; ``sammoe segment --clicks seg.clicks.json`` reproduces the label map. Every file goes through
``sammoe.files`` (temp file + rename; the source image is never overwritten, even when napari's dialog says
yes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sammoe.data.io import Volume
from sammoe.napari.export import clicks_path, export, segments_of
from sammoe.napari.geometry import Display
from sammoe.napari.reader import META_KEY

__all__ = ["clicks_path", "write_labels"]


def _reference(meta: dict[str, Any], shape: tuple[int, ...]) -> tuple[Volume, Display]:
    """The source volume and its layout from the layer's metadata; a labels layer made elsewhere gets its own
    affine as the reference (no header, no source file to protect)."""
    ours = (meta.get("metadata") or {}).get(META_KEY) or {}
    volume, display = ours.get("volume"), ours.get("display")
    if isinstance(volume, Volume) and isinstance(display, Display):
        return volume, display
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=np.float64)
    if affine.shape != (4, 4):
        affine = np.eye(4)
    placeholder = np.broadcast_to(np.uint8(0), shape)  # the shape is all write_label reads from it
    return Volume(array=placeholder, affine=affine), Display.as_is(affine)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer hook; returns the paths written."""
    array = np.asarray(data)
    volume, display = _reference(meta, array.shape)
    clicks = ((meta.get("metadata") or {}).get(META_KEY) or {}).get("clicks")
    return export(path, display.stored(array), volume, segments_of(clicks), clicks)
