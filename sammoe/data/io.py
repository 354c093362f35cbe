"""Read and write medical volumes (NIfTI files, DICOM series) with their geometry.

Public API
----------
- ``Volume``: dataclass ``(array, affine, path, header)``. ``array`` is 3D in the order stored on disk
  (nibabel convention: axis i, j, k of the file), ``affine`` the 4x4 voxel -> RAS+ millimetre matrix.
- ``read_image(path, channel=None) -> Volume``: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM
  series.
- ``read_label(path, like=None, atol=1e-3) -> Volume``: an integer label map; checked against ``like`` (shape
  and affine within ``atol``).
- ``write_label(path, array, reference, overwrite=False, protect=()) -> Path``: uint8/uint16 NIfTI with the
  reference's affine and header, written atomically (temp file + rename); never overwrites an input.
- ``check_same_grid(a, b, atol=1e-3)``: raise ``DataError`` unless two volumes share shape and affine.

Every problem a user can cause raises ``sammoe.errors.DataError`` with one line naming the file and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.formats import is_other_format, is_seg_nrrd, read_other, write_seg_nrrd
from sammoe.data.volume import (
    Volume,
    check_affine,
    check_intensities,
    check_not_constant,
    read_nibabel,
    sitk_to_volume,
    squeeze_to_3d,
)
from sammoe.errors import DataError
from sammoe.files import check_outputs, write_file

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def _read_dicom_dir(path: Path) -> Volume:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise DataError(
            f"{path}: folder holds no DICOM series; point to a NIfTI file or a DICOM series folder"
        )
    if len(series) > 1:
        raise DataError(
            f"{path}: folder holds {len(series)} DICOM series; move each series into its own folder"
        )
    files = reader.GetGDCMSeriesFileNames(str(path), series[0])
    _check_slice_positions(path, files)
    try:
        reader.SetFileNames(files)
        image = reader.Execute()
    except Exception as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{path}: cannot read DICOM series ({reason}); check that every slice is complete"
        ) from None
    volume = sitk_to_volume(image, path)
    volume.array = squeeze_to_3d(volume.array, path, None)
    check_affine(volume.affine, path)
    check_intensities(volume.array, path)
    return volume


def _slice_geometry(path: Path, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """One slice's ImagePositionPatient, direction cosines (row, column), pixel spacing and size, read from
    its own header: GDCM replaces degenerate cosines by the identity, the series reader keeps the first
    slice's geometry for all."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except Exception:
        raise DataError(
            f"{path}: slice {Path(name).name} cannot be read; it is truncated or not DICOM"
        ) from None
    if not reader.HasMetaDataKey("0020|0032"):
        raise DataError(
            f"{path}: slice {Path(name).name} has no ImagePositionPatient (0020,0032), so the slices "
            "cannot be placed; export the series with its geometry"
        )
    cosines = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)[:, :2].T
    if reader.HasMetaDataKey("0020|0037"):
        text = reader.GetMetaData("0020|0037").strip()
        try:
            cosines = np.asarray([float(v) for v in text.split("\\")], dtype=np.float64).reshape(2, 3)
        except ValueError:
            cosines = np.full((2, 3), np.nan)
        if not np.all(np.isfinite(cosines)):
            raise DataError(
                f"{path}: slice {Path(name).name} has an unreadable ImageOrientationPatient {text!r}; "
                "export the series again"
            )
    origin = np.asarray(reader.GetOrigin(), dtype=np.float64)
    return origin, cosines, np.asarray(reader.GetSpacing()[:2], dtype=np.float64), tuple(reader.GetSize()[:2])


def _check_slice_positions(path: Path, files: Sequence[str]) -> None:
    """Refuse a series whose slices are not one evenly spaced stack of parallel, equal slices: a missing
    slice, a duplicated position, uneven gaps, a slice at another orientation, pixel spacing or size,
    degenerate direction cosines or a gantry tilt (a sheared stack) would be silently read as an orthogonal
    grid with the first slice's geometry and one averaged spacing, misplacing anatomy by millimetres."""
    geometry = [_slice_geometry(path, name) for name in files]
    origins = np.stack([g[0] for g in geometry])
    _, cosines, first_spacing, first_size = geometry[0]
    row, col = cosines
    if (
        abs(np.linalg.norm(row) - 1) > 1e-3
        or abs(np.linalg.norm(col) - 1) > 1e-3
        or abs(float(np.dot(row, col))) > 1e-3
    ):
        raise DataError(
            f"{path}: degenerate ImageOrientationPatient {np.round(cosines.ravel(), 4).tolist()} "
            "(the row and column cosines must be orthogonal unit vectors); fix the orientation or export the "
            "series again"
        )
    for name, (_, other, spacing, size) in zip(files, geometry):
        if np.abs(other - cosines).max() > 1e-3:
            raise DataError(
                f"{path}: slice {Path(name).name} has another orientation "
                f"({np.round(other.ravel(), 4).tolist()} vs {np.round(cosines.ravel(), 4).tolist()}); "
                "the slices are not one stack, export each acquisition as its own series"
            )
        if size != first_size or np.abs(spacing - first_spacing).max() > 1e-3 * first_spacing.max():
            raise DataError(
                f"{path}: slice {Path(name).name} is {size[0]}x{size[1]} pixels of "
                f"{spacing[0]:.4g}x{spacing[1]:.4g} mm where the first is {first_size[0]}x{first_size[1]} "
                f"of {first_spacing[0]:.4g}x{first_spacing[1]:.4g} mm; the slices are not one stack, "
                "export each acquisition as its own series"
            )
    if len(files) < 2:
        return
    normal = np.cross(row, col)
    along = origins @ normal
    order = np.argsort(along)
    positions = along[order]
    gaps = np.diff(positions)
    if np.any(gaps < 1e-3):
        at = float(positions[int(np.argmin(gaps))])
        raise DataError(f"{path}: two slices share the position {at:.2f} mm; remove the duplicate slice")
    step = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > max(0.01 * step, 0.05):
        raise DataError(
            f"{path}: slices are not evenly spaced: a gap of {gaps[worst]:.2f} mm "
            f"between {positions[worst]:.2f} and {positions[worst + 1]:.2f} mm where the others are "
            f"{step:.2f} mm (a missing slice?); export the complete series"
        )
    # In-plane drift of each slice's corner from the first one: zero for a stack along the slice normal.
    drift = origins[order] - origins[order[0]]
    drift = drift - np.outer(drift @ normal, normal)
    shear = float(np.linalg.norm(drift, axis=1).max())
    if shear > 0.1 * float(first_spacing.min()):
        raise DataError(
            f"{path}: gantry-tilted (sheared) series: the slice corners drift {shear:.2f} mm within the "
            "slice plane across the stack; resample it to an orthogonal grid first (e.g. with 3D Slicer or "
            "dcm2niix)"
        )


def read_image(path: str | os.PathLike, channel: int | None = None) -> Volume:
    """Read a NIfTI file (``.nii``/``.nii.gz``), NRRD, MHA/MHD, MGH/MGZ or a DICOM series folder as a 3D
    ``Volume``.

    4D data with one volume is squeezed; several volumes need ``channel``. Raises ``DataError`` for a missing,
    unreadable or truncated file, a header larger than ``max_voxels()``, non-3D, colour, complex or constant
    data, NaN/inf intensities, a singular affine, a NIfTI header its data contradicts (voxels inside the
    header, no voxel size, a vector intent, a bad gzip CRC), or a DICOM series that is not one orthogonal
    stack (missing or uneven slices, mixed orientation or pixel spacing, degenerate cosines, gantry tilt).
    """
    volume = _read_volume(path, channel)
    check_not_constant(volume)
    volume.checked = True
    return volume


def as_volume(image: Any, affine: Any = None, *, channel: int | None = None) -> Volume:
    """A path (read with ``read_image``), a ``Volume``, or a 3D array (numpy or torch) with its
    voxel -> RAS mm ``affine`` (identity when None), held to the same checks as a file."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, channel=channel)
    if isinstance(image, Volume):
        if image.checked:
            return image
        volume = image
    else:
        array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
        if array.ndim != 3:
            raise DataError(f"image array must be 3D, got shape {array.shape}")
        volume = Volume(
            array=array, affine=np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        )
    where = volume.path or Path("image array")
    volume.affine = check_affine(volume.affine, where)
    check_intensities(np.asarray(volume.array), where)
    check_not_constant(volume)
    volume.checked = True
    return volume


def _read_volume(path: str | os.PathLike, channel: int | None = None) -> Volume:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path (and the dataset root)")
    if path.is_dir():
        return _read_dicom_dir(path)
    if is_nifti(path):
        return read_nibabel(path, channel)

    if is_other_format(path):
        return read_other(path, channel)
    raise DataError(
        f"{path}: unsupported file type; give a NIfTI (.nii/.nii.gz), NRRD, MHA/MHD or MGZ file, "
        "or a DICOM series folder"
    )


def check_same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> None:
    """Raise ``DataError`` naming ``b.path`` unless ``b`` has ``a``'s shape and affine
    (within ``atol`` mm)."""
    if a.shape != b.shape:
        raise DataError(
            f"{b.path}: shape {b.shape} differs from image {a.path} shape {a.shape}; "
            "resample the label onto the image grid"
        )
    diff = float(np.abs(np.asarray(a.affine) - np.asarray(b.affine)).max())
    if diff > atol:
        raise DataError(
            f"{b.path}: affine differs from image {a.path} by up to {diff:.4g} mm (tolerance {atol}); "
            "fix the label header or resample the label onto the image grid"
        )


def _as_label_array(array: np.ndarray, path: Path | None) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating) and (
        not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array))
    ):
        raise DataError(f"{path}: label map holds non-integer values; save labels as integers")
    if array.size and array.min() < 0:
        raise DataError(f"{path}: label map holds negative values; labels must be 0 (background) or positive")
    top = int(array.max()) if array.size else 0
    if top <= np.iinfo(np.uint8).max:
        return array.astype(np.uint8, copy=False)
    if top <= np.iinfo(np.uint16).max:
        return array.astype(np.uint16, copy=False)
    raise DataError(f"{path}: label value {top} exceeds 65535; renumber the labels")


def read_label(path: str | os.PathLike, like: Volume | None = None, atol: float = 1e-3) -> Volume:
    """Read an integer label map (uint8/uint16 array). With ``like``, check shape and affine match it."""
    volume = _read_volume(path)
    volume.array = _as_label_array(volume.array, volume.path)
    if like is not None:
        check_same_grid(like, volume, atol=atol)
    return volume


def label_values(volume: Volume) -> list[int]:
    """Sorted non-zero values present in a label map."""
    return [int(v) for v in np.unique(volume.array) if v != 0]


def check_label_values(label: Volume, allowed: Iterable[int], source: str = "dataset.json") -> None:
    """Raise ``DataError`` if ``label`` holds values not in ``allowed``."""
    check_declared(label.path, label_values(label), allowed, source)


def check_declared(
    path: str | os.PathLike | None,
    values: Iterable[int],
    allowed: Iterable[int],
    source: str = "dataset.json",
) -> None:
    """Raise ``DataError`` naming the label file ``path`` if ``values`` (those it holds) are not in
    ``allowed`` (0, background, always is)."""
    allowed_set = {int(v) for v in allowed} | {0}
    extra = sorted({int(v) for v in values} - allowed_set)
    if extra:
        raise DataError(
            f"{path}: label values {extra} are not declared in {source} "
            f"(declared: {sorted(allowed_set)}); "
            f"add them to its 'labels' or fix the label file"
        )


def write_label(
    path: str | os.PathLike,
    array: Any,
    reference: Volume,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
    segments: Sequence[tuple[int, str, str]] = (),
    *,
    checked: bool = False,
) -> Path:
    """Write a label map as uint8 (or uint16 if values exceed 255) NIfTI on ``reference``'s grid, as a 3D
    Slicer segmentation when ``path`` ends with ``.seg.nrrd``, or as a DICOM-SEG referencing the source series
    when it ends with ``.dcm`` (``segments``: (value, name, description) per target).

    The affine (and the NIfTI header, when the reference came from NIfTI) is the reference's. The file is
    written to a temporary name in the target folder and renamed, so a crash never leaves a half-written file.
    Refuses to overwrite ``reference.path`` or any path in ``protect``; refuses an existing ``path`` unless
    ``overwrite``. ``array`` may be a numpy array or a torch tensor of the reference's shape. ``checked``: the
    caller has already held ``path`` against every input with ``files.check_outputs`` (a command that checks
    all its outputs before any work), so it is not checked again.
    """
    import nibabel as nib

    from sammoe.data.dicom_seg import is_dicom_seg, write_dicom_seg

    path = Path(path)
    if not (is_nifti(path) or is_seg_nrrd(path) or is_dicom_seg(path)):
        raise DataError(
            f"{path}: output must end with .nii, .nii.gz, .seg.nrrd (3D Slicer) or .dcm (DICOM-SEG)"
        )
    inputs = {f"input {i + 1}": p for i, p in enumerate(protect)}
    if reference.path is not None:
        inputs["the reference image"] = reference.path
    if not checked:
        check_outputs({"label map": path}, inputs, overwrite=overwrite)
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != reference.shape:
        raise DataError(
            f"{path}: label shape {array.shape} does not match reference {reference.path} shape "
            f"{reference.shape}; map the prediction onto the original grid first (sammoe.data.inverse.invert)"
        )
    data = _as_label_array(array, path)
    named = list(segments) or [(int(v), f"label {int(v)}", "") for v in np.unique(data) if v]
    if is_seg_nrrd(path):
        return write_file(
            path, lambda tmp: write_seg_nrrd(tmp, data, reference.affine, named), suffix=".seg.nrrd"
        )
    if is_dicom_seg(path):
        if reference.path is None or not Path(reference.path).is_dir():
            raise DataError(f"{path}: a DICOM-SEG needs the DICOM series folder the image was read from")
        return write_file(
            path, lambda tmp: write_dicom_seg(tmp, data, Path(reference.path), named), suffix=".dcm"
        )
    header = None
    if isinstance(reference.header, nib.Nifti1Header):
        header = reference.header.copy()
        header.set_data_dtype(data.dtype)
        header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(data, reference.affine, header=header)
    image.set_data_dtype(data.dtype)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    return write_file(path, lambda tmp: nib.save(image, str(tmp)), suffix=suffix)
