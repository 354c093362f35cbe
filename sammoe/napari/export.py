"""Saving a segmentation from the viewer (no Qt): every target in one label map, or one file per target, as
NIfTI, a 3D Slicer ``.seg.nrrd`` or a DICOM-SEG (for a DICOM series source), chosen by the extension.

Each file goes through ``sammoe.data.io.write_label``, the writer ``sammoe segment --out`` uses (the source
grid and affine, segments named after the targets with the decoder that segmented them), and the clicks
document goes beside it as ``<name>.clicks.json``, which ``sammoe segment --clicks`` replays. Every output is
checked against the source image (and each other) before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.dicom_seg import is_dicom_seg
from sammoe.data.formats import is_seg_nrrd
from sammoe.data.io import Volume, is_nifti, write_label
from sammoe.errors import DataError
from sammoe.files import check_outputs, write_text

CLICKS_SUFFIX = ".clicks.json"
# what the save dialog offers: (name, extension)
FORMATS = (("NIfTI", ".nii.gz"), ("3D Slicer segmentation", ".seg.nrrd"), ("DICOM-SEG", ".dcm"))
_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".dcm")
Segment = tuple[int, str, str]  # (label value, name, description), as segmentation files name segments


def split_suffix(path: str | Path) -> tuple[Path, str]:
    """``seg.nii.gz`` -> (``seg``, ``.nii.gz``): the known ending, whatever its case."""
    path = Path(path)
    for suffix in _SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.with_name(path.name[: -len(suffix)]), path.name[-len(suffix) :]
    return path, ""


def clicks_path(path: str | Path) -> Path:
    """``seg.nii.gz`` (or ``.seg.nrrd``, ``.dcm``) -> ``seg.clicks.json`` (same folder)."""
    stem, _ = split_suffix(path)
    return stem.with_name(stem.name + CLICKS_SUFFIX)


def check_format(path: str | Path, volume: Volume) -> None:
    """One line when ``path`` names no format the writer has, or a DICOM-SEG without a DICOM series."""
    path = Path(path)
    if not (is_nifti(path) or is_seg_nrrd(path) or is_dicom_seg(path)):
        raise DataError(f"{path}: save a segmentation as .nii.gz, .nii, .seg.nrrd or .dcm (DICOM-SEG)")
    if is_dicom_seg(path) and (volume.path is None or not Path(volume.path).is_dir()):
        raise DataError(
            f"{path}: a DICOM-SEG references the slices of a DICOM series, and this image was not read from "
            "one; save as .nii.gz or .seg.nrrd"
        )


def target_paths(path: str | Path, segments: Sequence[Segment]) -> list[Path]:
    """One file per target: ``seg.nii.gz`` -> ``seg_liver.nii.gz``, ``seg_lesion_2.nii.gz`` ..."""
    stem, suffix = split_suffix(path)
    return [
        stem.with_name(f"{stem.name}_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}{suffix}")
        for _, name, _ in segments
    ]


def segments_of(clicks: dict[str, Any] | None) -> list[Segment]:
    """The segments a clicks document names: its targets in label order, described by their decoder."""
    if not clicks:
        return []
    experts = {r.get("name"): r.get("expert") for r in clicks.get("results", [])}
    return [
        (value, t["name"], f"sammoe {experts.get(t['name']) or 'clicks'}")
        for value, t in enumerate(clicks.get("targets", []), start=1)
    ]


def export(
    path: str | Path,
    labels: np.ndarray,
    volume: Volume,
    segments: Sequence[Segment],
    clicks: dict[str, Any] | None = None,
    *,
    per_target: bool = False,
) -> list[str]:
    """Write ``labels`` (stored axis order) on ``volume``'s grid; returns the paths written. ``per_target``:
    one file per segment, each holding that target alone as value 1."""
    check_format(path, volume)
    segments = list(segments)
    if per_target and not segments:
        raise DataError("nothing to save one file per target of: no target has a mask yet")
    outputs: dict[str, Path | None] = {}
    if per_target:
        outputs.update(
            {f"the file of target {n!r}": p for (_, n, _), p in zip(segments, target_paths(path, segments))}
        )
    else:
        outputs["label map"] = Path(path)
    outputs["clicks file"] = clicks_path(path) if clicks else None
    check_outputs(outputs, {"the source image": volume.path}, overwrite=True)
    written = []
    if per_target:
        for (value, name, description), out in zip(segments, target_paths(path, segments)):
            mask = (np.asarray(labels) == value).astype(np.uint8)
            written.append(
                write_label(
                    out, mask, volume, overwrite=True, segments=[(1, name, description)], checked=True
                )
            )
    else:
        written.append(write_label(path, labels, volume, overwrite=True, segments=segments, checked=True))
    if clicks:
        written.append(
            write_text(outputs["clicks file"], json.dumps(clicks, indent=2, allow_nan=False) + "\n")
        )
    return [str(p) for p in written]
