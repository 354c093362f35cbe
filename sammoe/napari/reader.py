"""The npe2 reader: what ``sammoe.data.io`` reads (NIfTI, NRRD, MHA/MHD, MGH/MGZ files, DICOM series folders)
as an image layer.

The layer's data axes are the stored voxel axes and its affine the file's voxel -> RAS mm matrix
(``geometry.Display``), so napari shows true millimetres and a click's data coordinates are voxel indices.
The ``Volume`` rides along in the layer's metadata, so the widget segments exactly what ``sammoe segment``
reads from the same file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.formats import SUFFIXES as OTHER_SUFFIXES
from sammoe.data.formats import is_other_format
from sammoe.data.io import NIFTI_SUFFIXES, Volume, is_nifti, read_image
from sammoe.napari.geometry import Display

META_KEY = "sammoe"  # layer.metadata[META_KEY]: {"volume": Volume, "display": Display}
_DICOM_MAGIC_AT = 128  # DICOM Part 10 files carry "DICM" after a 128-byte preamble


def _looks_like_dicom_folder(folder: Path, probe: int = 32) -> bool:
    """A folder with at least one DICOM file among its first few files (cheap: napari asks every reader)."""
    try:
        names = sorted(os.listdir(folder))[:probe]
    except OSError:
        return False
    for name in names:
        path = folder / name
        if name.lower().endswith(".dcm"):
            return True
        try:
            with open(path, "rb") as handle:
                handle.seek(_DICOM_MAGIC_AT)
                if handle.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """npe2 reader hook: a reader for one image file sammoe reads or a DICOM folder, None for anything else
    (so napari asks the next plugin)."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        return read_layers if _looks_like_dicom_folder(p) else None
    return read_layers if is_nifti(p) or is_other_format(p) else None


def _contrast(array: np.ndarray) -> tuple[float, float]:
    """0.5-99.5 percentiles on a subsample: a CT window that ignores air and metal, in a few milliseconds."""
    step = max(1, round((array.size / 2_000_000) ** (1 / 3)))
    sample = np.asarray(array[::step, ::step, ::step], dtype=np.float32)
    low, high = np.percentile(sample, [0.5, 99.5])
    return (float(low), float(high)) if high > low else (float(sample.min()), float(sample.max()))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(NIFTI_SUFFIXES + OTHER_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def layer_data(volume: Volume, name: str | None = None) -> tuple:
    """The image layer tuple of a volume (data, kwargs, "image")."""
    display = Display.of(volume.affine)
    if name is None:
        name = "image" if volume.path is None else _stem(volume.path)
    kwargs = {
        "name": name,
        "affine": display.affine,
        "units": "mm",
        "colormap": "gray",
        "contrast_limits": _contrast(volume.array),
        "metadata": {META_KEY: {"volume": volume, "display": display}},
    }
    return display.view(volume.array), kwargs, "image"


def read_layers(path: Any) -> list[tuple]:
    """Read one path (raises ``sammoe.errors.DataError`` with a one-line reason when it cannot)."""
    if isinstance(path, (list, tuple)):
        path = path[0]
    return [layer_data(read_image(path))]
