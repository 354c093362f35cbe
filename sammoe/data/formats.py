"""Image formats beyond NIfTI and DICOM: NRRD, MetaImage (MHA/MHD) through SimpleITK, MGH/MGZ through nibabel.

Each is read into the same ``Volume`` (array in the file's voxel order, voxel -> RAS mm affine) and held to
the same checks as NIfTI; the header's size is checked before any voxel is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sammoe.errors import DataError

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
MGH_SUFFIXES = (".mgz", ".mgh")
SUFFIXES = SITK_SUFFIXES + MGH_SUFFIXES


def is_other_format(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIXES)


def read_other(path: Path, channel: int | None):
    """A NRRD / MetaImage / MGH file as a ``Volume`` (see the module docstring)."""
    from sammoe.data import io

    if str(path).lower().endswith(MGH_SUFFIXES):
        return _read_mgh(path, channel)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception as exc:
        raise DataError(f"{path}: cannot read the header ({_reason(exc)}); re-export the image") from None
    size = tuple(int(s) for s in reader.GetSize())
    io._check_header_size(
        size + ((reader.GetNumberOfComponents(),) if reader.GetNumberOfComponents() > 1 else ()), path
    )
    if len(size) == 4 or reader.GetNumberOfComponents() > 1:
        raise DataError(
            f"{path}: {len(size)}D image with {reader.GetNumberOfComponents()} component(s) per voxel; "
            "save one 3D grey-value volume (e.g. with 3D Slicer or SimpleITK)"
        )
    if len(size) != 3:
        raise DataError(f"{path}: image is {len(size)}D; a 3D volume is needed")
    try:
        image = reader.Execute()
    except Exception as exc:
        raise DataError(
            f"{path}: cannot read the voxels ({_reason(exc)}); the file is truncated, re-export it"
        ) from None
    volume = io.sitk_to_volume(image, path)
    io._check_affine(volume.affine, path)
    io._check_intensities(volume.array, path)
    return volume


def _read_mgh(path: Path, channel: int | None):
    import nibabel as nib

    from sammoe.data import io

    try:
        img = nib.load(str(path))
        io._check_header_size(tuple(img.shape), path)
        array = np.asarray(np.asanyarray(img.dataobj))
    except DataError:
        raise
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise DataError(
            f"{path}: cannot read MGH/MGZ ({_reason(exc)}); the file is truncated, re-export it"
        ) from None
    array = io._squeeze_to_3d(array, path, channel)
    affine = io._check_affine(np.asarray(img.affine, dtype=np.float64), path)
    io._check_intensities(array, path)
    return io.Volume(array=array, affine=affine, path=path)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__
