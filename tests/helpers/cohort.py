"""A small cohort on disk for the batch-prediction tests: phantom scans in several formats, a clicks file per
scan (one click near the centre of each chosen structure, in stored voxel indices) and reference labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FORMATS = (".nii.gz", ".nrrd", ".mha", "dicom")


def click_inside(label: np.ndarray, value: int) -> list[float]:
    """The voxel of ``value`` nearest its centroid (inside the structure even when it is not convex)."""
    voxels = np.argwhere(label == value)
    centre = voxels.mean(axis=0)
    return [float(v) for v in voxels[np.argmin(((voxels - centre) ** 2).sum(axis=1))]]


def _write(path: Path, array: np.ndarray, spacing, kind: str) -> Path:
    """``array`` (x, y, z) in ``kind``'s format, the same geometry whatever the format (so a scan and its
    reference labels share a grid)."""
    import SimpleITK as sitk

    if kind == ".nii.gz":
        import nibabel as nib

        nib.save(nib.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
        return path
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing([float(s) for s in spacing])
    if kind == "dicom":
        from helpers.dicom import write_dicom_series

        return write_dicom_series(path, sitk.Cast(image, sitk.sitkInt16))
    sitk.WriteImage(image, str(path))
    return path


def write_cohort(
    root: Path,
    n_cases: int = 4,
    formats=FORMATS,
    structures=("liver", "kidney_left"),
    shape=(64, 64, 40),
    spacing=(2.0, 2.0, 3.0),
) -> dict[str, Path]:
    """``root/images`` (case_00.nii.gz, case_01.nrrd, case_02.mha, case_03/ DICOM, ...), ``root/prompts``
    (case_NN.json) and ``root/labels`` (case_NN in the scan's format, DICOM's as .nrrd)."""
    from sammoe.data.phantoms import LABELS, make_phantom_case

    folders = {name: root / name for name in ("images", "prompts", "labels")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        case = f"case_{i:02d}"
        kind = formats[i % len(formats)]
        image, label, _ = make_phantom_case(100 + i, shape=shape, spacing=spacing)
        image = np.round(image).astype(np.int16)
        name = case if kind == "dicom" else case + kind
        _write(folders["images"] / name, image, spacing, kind)
        label_kind = ".nrrd" if kind == "dicom" else kind
        _write(folders["labels"] / (case + label_kind), label, spacing, label_kind)
        targets = [
            {"name": s, "points": [click_inside(label, LABELS[s])], "labels": [1]}
            for s in structures
            if (label == LABELS[s]).any()
        ]
        (folders["prompts"] / f"{case}.json").write_text(json.dumps({"space": "voxel", "targets": targets}))
    return folders
