"""The volume type every reader returns, and the checks that make one: a 3D grey-value array on an invertible,
finite voxel-to-RAS affine, within the size limit. `io` (NIfTI, DICOM) and `formats` (NRRD, MetaImage, MGH)
both build their volumes here, so a file of any format is refused for the same reasons with the same words."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.errors import DataError

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
    # set by the readers once every check has passed, so a volume handed on is not scanned again
    checked: bool = field(default=False, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def squeeze_to_3d(array: np.ndarray, path: Path, channel: int | None) -> np.ndarray:
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


def check_affine(affine: np.ndarray, path: Path) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise DataError(
            f"{path}: invalid voxel-to-world affine (singular or non-finite); fix the header's sform/qform"
        )
    return affine


def check_finite(array: np.ndarray, path: Path) -> None:
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


def check_header_size(shape: tuple[int, ...], path: Path) -> None:
    voxels = int(np.prod([int(s) for s in shape], dtype=object))
    if voxels > max_voxels():
        raise DataError(
            f"{path}: the header claims {'x'.join(map(str, shape))} = {voxels:,} voxels, "
            "more than the limit of "
            f"{max_voxels():,}; crop or downsample the image, or raise SAMMOE_MAX_VOXELS"
        )


def check_intensities(array: np.ndarray, path: Path) -> None:
    """Refuse what cannot be one grey value per voxel, or carries no image at all."""
    if array.dtype.names is not None or array.dtype.kind == "V":
        raise DataError(f"{path}: colour (RGB) or structured voxels; convert it to one grey channel")
    if np.iscomplexobj(array):
        raise DataError(f"{path}: complex-valued image; save its magnitude (numpy.abs) as a real image")
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: voxel type {array.dtype} is not a number; save it as integers or floats")
    check_finite(array, path)
    if (
        array.dtype.kind == "f"
        and array.size
        and float(np.abs(array).max()) > float(np.finfo(np.float32).max)
    ):
        raise DataError(
            f"{path}: intensities up to {float(np.abs(array).max()):.3g} exceed the float32 range (check the "
            "header's scl_slope/scl_inter); rescale the image and save it again"
        )


def check_not_constant(volume: Volume) -> None:
    """An image whose voxels are all equal has nothing to segment (z-normalisation would make every crop zero
    and the model label a third of the volume); a label map may be empty, so this is for images only."""
    array = volume.array
    if array.size and array.min() == array.max():
        raise DataError(
            f"{volume.path}: every voxel has the value {array.flat[0].item()!r}; "
            "the image is blank, check the export"
        )


def _first_bytes(stream: Any, count: int) -> bytes:
    data = stream.read(count)
    stream.seek(0)
    return data


def _raw_nifti_header(path: Path, first: bytes) -> Any:
    """The NIfTI header as written, before nibabel's fixes (it turns a zero pixdim into 1 and a negative one
    positive, which would hide a grid with no size); None for a file too short to hold one."""
    import nibabel as nib

    for klass in (nib.Nifti1Header, nib.Nifti2Header):
        size = klass.sizeof_hdr
        if len(first) >= size and size in (
            int.from_bytes(first[:4], "little"),
            int.from_bytes(first[:4], "big"),
        ):
            return klass(first[:size], check=False)
    return None


def check_nifti_header(path: Path, raw: Any, shape: tuple[int, ...], channel: int | None) -> None:
    """Refuse what a NIfTI header says that its data contradicts: a single file whose voxels start inside the
    header, a voxel size of zero or below where the affine comes from pixdim, a vector/tensor per voxel."""
    if raw is None:
        return
    first_voxel = int(raw.sizeof_hdr) + 4
    offset = float(raw["vox_offset"])
    if offset < first_voxel:
        raise DataError(
            f"{path}: header vox_offset {offset:g} is inside the {first_voxel}-byte header, so header bytes "
            f"would be read as voxels; set vox_offset to {first_voxel} or more (where the data starts) "
            "or re-export the file"
        )
    if int(raw["sform_code"]) == 0:
        ndim = max(1, min(3, int(raw["dim"][0])))
        sizes = np.asarray(raw["pixdim"][1 : ndim + 1], dtype=np.float64)
        if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
            source = "qform" if int(raw["qform_code"]) > 0 else "no sform or qform"
            raise DataError(
                f"{path}: voxel size pixdim[1:{ndim + 1}] = {sizes.tolist()} has a zero, negative or "
                f"non-finite value and the grid comes from it ({source}), so it has no size; write the voxel "
                "sizes (pixdim) or an sform into the header"
            )
    intent = int(raw["intent_code"])
    if len(shape) > 3 and intent != 0 and channel is None:
        name = raw.get_intent()[0]
        raise DataError(
            f"{path}: data of shape {shape} holds a {name} (intent code {intent}) per voxel, not one grey "
            "value; save the component you want as a 3D NIfTI"
        )


def read_nibabel(path: Path, channel: int | None, kind: str = "NIfTI") -> Volume:
    """A NIfTI (or another nibabel format, named by ``kind`` in the messages, e.g. MGH/MGZ) as a checked
    ``Volume``; the NIfTI header is kept for writing labels. A ``.nii.gz`` is read through one gzip stream,
    drained to its end so that its CRC and length are verified (nibabel stops at the last voxel)."""
    import gzip

    import nibabel as nib

    gz = kind == "NIfTI" and str(path).lower().endswith(".gz")
    with contextlib.ExitStack() as stack:
        try:
            if gz:
                stream = stack.enter_context(gzip.open(path, "rb"))
                first = _first_bytes(stream, 540)
                klass = (
                    nib.Nifti2Image if isinstance(_raw_nifti_header(path, first), nib.Nifti2Header) else None
                )
                klass = klass or nib.Nifti1Image
                img = klass.from_file_map(klass.make_file_map({"image": stream}))
            else:
                img = nib.load(str(path))
                first = b""
                if kind == "NIfTI":
                    with open(path, "rb") as handle:
                        first = handle.read(540)
        except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, ...)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"{path}: cannot read {kind} ({reason}); the file is not {kind}, re-export it"
            ) from None
        check_header_size(tuple(img.shape), path)
        if kind == "NIfTI":
            check_nifti_header(path, _raw_nifti_header(path, first), tuple(img.shape), channel)
        try:
            # Force the full read here so truncated/corrupt files fail now, with a clear message.
            array = np.asanyarray(img.dataobj)
            if gz:
                while stream.read(1 << 20):
                    pass
        except Exception as exc:  # nibabel raises many types (EOFError, zlib.error, ImageFileError, ...)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(
                f"{path}: cannot read {kind} ({reason}); the file is truncated or corrupt, re-export it"
            ) from None
    array = np.asarray(array)
    if (
        array.dtype.names is None
        and array.dtype.kind != "V"
        and not np.iscomplexobj(array)
        and array.ndim == 3
    ):
        check_finite(array, path)  # an overflowing scl_slope gives inf: name it before anything else
    array = squeeze_to_3d(array, path, channel)
    affine = check_affine(img.affine, path)
    check_intensities(array, path)
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
