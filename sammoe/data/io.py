"""Read and write medical volumes (NIfTI files, DICOM series) with their geometry.

Public API
----------
- ``Volume``: dataclass ``(array, affine, path, header)``. ``array`` is 3D in the order stored on disk
  (nibabel convention: axis i, j, k of the file), ``affine`` the 4x4 voxel -> RAS+ millimetre matrix.
- ``read_image(path, channel=None) -> Volume``: a ``.nii``/``.nii.gz`` file or a folder holding one DICOM series.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.errors import DataError
from sammoe.files import check_outputs, write_file

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# LPS (ITK/DICOM physical space) <-> RAS (NIfTI/nibabel): negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D array with its voxel-to-world (RAS+ mm) affine.

    ``array`` keeps the voxel order of the file (no reorientation). ``header`` is the nibabel NIfTI header
    when read from NIfTI (reused when writing labels), else ``None``.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = None
    header: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def is_nifti(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def _squeeze_to_3d(array: np.ndarray, path: Path, channel: int | None) -> np.ndarray:
    if array.ndim > 3 and channel is not None:
        if array.ndim != 4 or not 0 <= channel < array.shape[3]:
            raise DataError(
                f"{path}: channel={channel} does not exist in data of shape {array.shape}; "
                f"use a channel in 0..{array.shape[3] - 1 if array.ndim == 4 else 0}"
            )
        array = array[..., channel]
    # Trailing singleton axes (4D with one volume, NIfTI 5D vector dims of size 1) are dropped.
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        return array
    if array.ndim == 4:
        raise DataError(
            f"{path}: 4D data with {array.shape[3]} volumes (shape {array.shape}); pass channel=<index> "
            "or split it into one 3D file per channel (nnU-Net: <case>_0000.nii.gz, _0001, ...)"
        )
    raise DataError(f"{path}: expected a 3D volume, got shape {array.shape}; convert it to a 3D NIfTI")


def _check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(
            f"{path}: invalid voxel-to-world affine (singular or non-finite); fix the header's sform/qform"
        )
    return affine


def _check_finite(array: np.ndarray, path: Path) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise DataError(
            f"{path}: {bad} NaN/inf intensities; replace them (e.g. numpy.nan_to_num) and save the file again"
        )


def max_voxels() -> int:
    """Largest image sammoe reads (``SAMMOE_MAX_VOXELS``, default 400 million voxels, 1.6 GB as float32),
    checked against the header before any data is read."""
    value = os.environ.get("SAMMOE_MAX_VOXELS", "400000000")
    try:
        limit = int(value)
    except ValueError:
        raise DataError(f"SAMMOE_MAX_VOXELS={value!r} is not a whole number of voxels") from None
    if limit < 1:
        raise DataError(f"SAMMOE_MAX_VOXELS={value!r} must be positive")
    return limit


def _check_header_size(shape: tuple[int, ...], path: Path) -> None:
    voxels = int(np.prod([int(s) for s in shape], dtype=object))
    if voxels > max_voxels():
        raise DataError(
            f"{path}: the header claims {'x'.join(map(str, shape))} = {voxels:,} voxels, more than the limit of "
            f"{max_voxels():,}; crop or downsample the image, or raise SAMMOE_MAX_VOXELS"
        )


def _check_intensities(array: np.ndarray, path: Path) -> None:
    """Refuse what cannot be one grey value per voxel, or carries no image at all."""
    if array.dtype.names is not None or array.dtype.kind == "V":
        raise DataError(f"{path}: colour (RGB) or structured voxels; convert it to one grey channel")
    if np.iscomplexobj(array):
        raise DataError(f"{path}: complex-valued image; save its magnitude (numpy.abs) as a real image")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {array.dtype} is not a number; save it as integers or floats")
    _check_finite(array, path)
    if (
        array.dtype.kind == "f"
        and array.size
        and float(np.abs(array).max()) > float(np.finfo(np.float32).max)
    ):
        raise DataError(
            f"{path}: intensities up to {float(np.abs(array).max()):.3g} exceed the float32 range (check the "
            "header's scl_slope/scl_inter); rescale the image and save it again"
        )


def _check_not_constant(volume: Volume) -> None:
    """An image whose voxels are all equal has nothing to segment (z-normalisation would make every crop zero
    and the model label a third of the volume); a label map may be empty, so this is for images only."""
    array = volume.array
    if array.size and array.min() == array.max():
        raise DataError(
            f"{volume.path}: every voxel has the value {array.flat[0].item()!r}; the image is blank, check the export"
        )


def read_nibabel(path: Path, channel: int | None, kind: str = "NIfTI") -> Volume:
    """A NIfTI (or another nibabel format, named by ``kind`` in the messages, e.g. MGH/MGZ) as a checked
    ``Volume``; the NIfTI header is kept for writing labels."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: cannot read {kind} ({reason}); the file is not {kind}, re-export it"
        ) from None
    _check_header_size(tuple(img.shape), path)
    try:
        # Force the full read here so truncated/corrupt files fail now, with a clear message.
        array = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"{path}: cannot read {kind} ({reason}); the file is truncated or not {kind}, re-export it"
        ) from None
    array = np.asarray(array)
    if (
        array.dtype.names is None
        and array.dtype.kind != "V"
        and not np.iscomplexobj(array)
        and array.ndim == 3
    ):
        _check_finite(array, path)  # an overflowing scl_slope gives inf: name it before anything else
    array = _squeeze_to_3d(array, path, channel)
    affine = _check_affine(img.affine, path)
    _check_intensities(array, path)
    header = img.header if isinstance(img.header, nib.Nifti1Header) else None
    return Volume(array=array, affine=affine, path=path, header=header)


def sitk_to_volume(image: Any, path: Path | None = None) -> Volume:
    """Convert a 3D SimpleITK image (LPS physical space, array z,y,x) to a ``Volume`` (i,j,k + RAS affine)."""
    import SimpleITK as sitk

    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() != 1 or array.ndim != 3:
        raise DataError(f"{path}: expected a single-channel 3D series, got array shape {array.shape}")
    array = np.ascontiguousarray(array.transpose(2, 1, 0))
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing(), dtype=np.float64)[None, :]
    lps[:3, 3] = image.GetOrigin()
    return Volume(array=array, affine=_LPS_TO_RAS @ lps, path=path)


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
    volume.array = _squeeze_to_3d(volume.array, path, None)
    _check_affine(volume.affine, path)
    _check_intensities(volume.array, path)
    return volume


def _check_slice_positions(path: Path, files: Sequence[str]) -> None:
    """Refuse a series whose slices are not one evenly spaced stack: a missing slice, a duplicated position or
    uneven gaps would be silently averaged into one spacing and misplace anatomy by millimetres."""
    import SimpleITK as sitk

    if len(files) < 2:
        return
    positions = []
    normal = None
    for name in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except Exception:
            raise DataError(
                f"{path}: slice {Path(name).name} cannot be read; it is truncated or not DICOM"
            ) from None
        if normal is None:
            direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(3, 3)
            normal = direction[:, 2]
        positions.append(float(np.dot(np.asarray(reader.GetOrigin(), dtype=np.float64), normal)))
    order = np.sort(np.asarray(positions))
    gaps = np.diff(order)
    if np.any(gaps < 1e-3):
        at = float(order[int(np.argmin(gaps))])
        raise DataError(f"{path}: two slices share the position {at:.2f} mm; remove the duplicate slice")
    step = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - step)))
    if abs(gaps[worst] - step) > max(0.01 * step, 0.05):
        raise DataError(
            f"{path}: slices are not evenly spaced: a gap of {gaps[worst]:.2f} mm between {order[worst]:.2f} and "
            f"{order[worst + 1]:.2f} mm where the others are {step:.2f} mm (a missing slice?); export the complete series"
        )


def read_image(path: str | os.PathLike, channel: int | None = None) -> Volume:
    """Read a NIfTI file (``.nii``/``.nii.gz``), NRRD, MHA/MHD, MGH/MGZ or a DICOM series folder as a 3D
    ``Volume``.

    4D data with one volume is squeezed; several volumes need ``channel``. Raises ``DataError`` for a missing,
    unreadable or truncated file, a header larger than ``max_voxels()``, non-3D, colour, complex or constant
    data, NaN/inf intensities, a singular affine, or a DICOM series with missing or uneven slices.
    """
    volume = _read_volume(path, channel)
    _check_not_constant(volume)
    return volume


def as_volume(image: Any, affine: Any = None, *, channel: int | None = None) -> Volume:
    """A path (read with ``read_image``), a ``Volume``, or a 3D array (numpy or torch) with its voxel -> RAS mm
    ``affine`` (identity when None), held to the same checks as a file."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, channel=channel)
    if isinstance(image, Volume):
        volume = image
    else:
        array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
        if array.ndim != 3:
            raise DataError(f"image array must be 3D, got shape {array.shape}")
        volume = Volume(
            array=array, affine=np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        )
    where = volume.path or Path("image array")
    volume.affine = _check_affine(volume.affine, where)
    _check_intensities(np.asarray(volume.array), where)
    _check_not_constant(volume)
    return volume


def _read_volume(path: str | os.PathLike, channel: int | None = None) -> Volume:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; check the path (and the dataset root)")
    if path.is_dir():
        return _read_dicom_dir(path)
    if is_nifti(path):
        return read_nibabel(path, channel)
    from sammoe.data.formats import is_other_format, read_other

    if is_other_format(path):
        return read_other(path, channel)
    raise DataError(
        f"{path}: unsupported file type; give a NIfTI (.nii/.nii.gz), NRRD, MHA/MHD or MGZ file, or a DICOM series "
        "folder"
    )


def check_same_grid(a: Volume, b: Volume, atol: float = 1e-3) -> None:
    """Raise ``DataError`` naming ``b.path`` unless ``b`` has ``a``'s shape and affine (within ``atol`` mm)."""
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
    allowed_set = {int(v) for v in allowed} | {0}
    extra = sorted(set(label_values(label)) - allowed_set)
    if extra:
        raise DataError(
            f"{label.path}: label values {extra} are not declared in {source} (declared: {sorted(allowed_set)}); "
            f"add them to its 'labels' or fix the label file"
        )


def write_label(
    path: str | os.PathLike,
    array: Any,
    reference: Volume,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike] = (),
    segments: Sequence[tuple[int, str, str]] = (),
) -> Path:
    """Write a label map as uint8 (or uint16 if values exceed 255) NIfTI on ``reference``'s grid, as a 3D
    Slicer segmentation when ``path`` ends with ``.seg.nrrd``, or as a DICOM-SEG referencing the source series
    when it ends with ``.dcm`` (``segments``: (value, name, description) per target).

    The affine (and the NIfTI header, when the reference came from NIfTI) is the reference's. The file is
    written to a temporary name in the target folder and renamed, so a crash never leaves a half-written file.
    Refuses to overwrite ``reference.path`` or any path in ``protect``; refuses an existing ``path`` unless
    ``overwrite``. ``array`` may be a numpy array or a torch tensor of the reference's shape.
    """
    import nibabel as nib

    from sammoe.data.dicom_seg import is_dicom_seg, write_dicom_seg
    from sammoe.data.formats import is_seg_nrrd, write_seg_nrrd

    path = Path(path)
    if not (is_nifti(path) or is_seg_nrrd(path) or is_dicom_seg(path)):
        raise DataError(
            f"{path}: output must end with .nii, .nii.gz, .seg.nrrd (3D Slicer) or .dcm (DICOM-SEG)"
        )
    inputs = {f"input {i + 1}": p for i, p in enumerate(protect)}
    if reference.path is not None:
        inputs["the reference image"] = reference.path
    check_outputs({"label map": path}, inputs, overwrite=overwrite)
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.shape != reference.shape:
        raise DataError(
            f"{path}: label shape {array.shape} does not match reference {reference.path} shape "
            f"{reference.shape}; map the prediction onto the original grid first (Preprocessor.invert)"
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
