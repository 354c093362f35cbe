"""DICOM series written from SimpleITK images, for the readers' tests."""

from __future__ import annotations

from pathlib import Path


def write_dicom_series(folder: Path, image, slices=None, uid: str = "1.2.826.0.1.3680043.2.1125.7") -> Path:
    """Write a SimpleITK 3D image as one DICOM file per slice (``slices``: the k indices, repeats allowed),
    with the series UID, slice position and instance number a reader sorts by."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for n, k in enumerate(range(image.GetSize()[2]) if slices is None else slices):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", uid)
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k))
        writer.SetFileName(str(folder / f"{n:03d}.dcm"))
        writer.Execute(sl)
    return folder
