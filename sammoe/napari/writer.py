"""The npe2 labels writer: a label map as NIfTI on the source image's grid, plus its clicks.

Beside ``seg.nii.gz`` it writes ``seg.clicks.json``: the targets' clicks in stored voxel indices, their names
and, under ``results``, the expert that segmented each one; ``sammoe segment --clicks seg.clicks.json``
reproduces the label map. Both files go through ``sammoe.data.io.write_label`` / ``sammoe.files`` (temp file +
rename; the source image is never overwritten, even when napari's dialog says yes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.io import Volume, is_nifti, write_label
from sammoe.errors import DataError
from sammoe.files import check_outputs, write_text
from sammoe.napari.geometry import Display
from sammoe.napari.reader import META_KEY

CLICKS_SUFFIX = ".clicks.json"


def clicks_path(path: str | Path) -> Path:
    """``seg.nii.gz`` -> ``seg.clicks.json`` (same folder)."""
    path = Path(path)
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + CLICKS_SUFFIX)


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
    out = Path(path)
    if not is_nifti(out):
        raise DataError(f"{out}: save a segmentation as .nii.gz or .nii")
    array = np.asarray(data)
    volume, display = _reference(meta, array.shape)
    stored = display.stored(array)
    clicks = ((meta.get("metadata") or {}).get(META_KEY) or {}).get("clicks")
    outputs = {"label map": out, "clicks file": clicks_path(out) if clicks else None}
    check_outputs(outputs, {"the source image": volume.path}, overwrite=True)
    written = [str(write_label(out, stored, volume, overwrite=True))]
    if clicks:
        text = json.dumps(clicks, indent=2, allow_nan=False) + "\n"
        written.append(str(write_text(outputs["clicks file"], text)))
    return written
