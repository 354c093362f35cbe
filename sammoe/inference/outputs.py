"""Everything a segmentation writes, checked once before any work and written through ``sammoe.files``.

``SegmentationOutputs`` names the files (label map, probabilities, report, picture); ``check`` refuses, before
the image is read or the model loaded, a wrong extension, an output that would replace an input or another
output, or a folder that accepts no file; ``write`` then writes them. ``Segmentation.save`` is the one-file
case for Python users.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.dicom_seg import check_available, is_dicom_seg
from sammoe.data.formats import is_seg_nrrd
from sammoe.data.io import Volume, is_nifti, write_label
from sammoe.errors import ConfigError
from sammoe.eval.overlay import overlay_slices, target_centre
from sammoe.files import check_outputs, write_file, write_text
from sammoe.inference.targets import Segmentation, Target, check_target

PathLike = str | os.PathLike


@dataclass(frozen=True)
class SegmentationOutputs:
    """The files one segmentation writes; only ``labels`` is required. Options name them in messages."""

    labels: PathLike
    probabilities: PathLike | None = None
    report: PathLike | None = None
    png: PathLike | None = None

    def _named(self) -> dict[str, PathLike | None]:
        return {
            "--out": self.labels,
            "--probabilities": self.probabilities,
            "--report": self.report,
            "--png": self.png,
        }

    def check(self, image: PathLike, inputs: Mapping[str, PathLike | None], *, overwrite: bool) -> None:
        """Every output against every input (``image`` among them) and each other, before anything is read."""
        if is_dicom_seg(self.labels):
            check_available(image, self.labels)
        elif not (is_nifti(Path(self.labels)) or is_seg_nrrd(self.labels)):
            raise ConfigError(
                f"--out {self.labels}: must end with .nii, .nii.gz, .seg.nrrd (3D Slicer) or .dcm (DICOM-SEG "
                "of a DICOM series input)"
            )
        if self.probabilities and not is_nifti(Path(self.probabilities)):
            raise ConfigError(f"--probabilities {self.probabilities}: must end with .nii or .nii.gz")
        if self.png and Path(self.png).suffix.lower() != ".png":
            raise ConfigError(f"--png {self.png}: must end with .png")
        check_outputs(self._named(), {"--image": image, **inputs}, overwrite=overwrite)

    def write(
        self, seg: Segmentation, targets: Sequence[Target], report: dict[str, Any], *, overwrite: bool
    ) -> None:
        """Write every named output of ``seg``; ``check`` must have passed. ``report`` gets the outputs."""
        write_label(
            self.labels, seg.labels, seg.volume, overwrite=overwrite, segments=seg.segments(), checked=True
        )
        if self.probabilities:
            write_probabilities(Path(self.probabilities), seg.probabilities, seg.volume)
        if self.png:
            write_file(Path(self.png), overlay_png(seg, targets))
        report["outputs"] = {
            key: str(value)
            for key, value in (
                ("labels", self.labels),
                ("probabilities", self.probabilities),
                ("png", self.png),
            )
            if value
        }
        if self.report:
            write_text(self.report, json.dumps(report, indent=2, allow_nan=False) + "\n")


def write_probabilities(path: Path, probs: Any, reference: Volume) -> Path:
    """Foreground probabilities as float32 NIfTI on the reference's grid (one volume per target)."""
    import nibabel as nib

    header = reference.header.copy() if isinstance(reference.header, nib.Nifti1Header) else None
    image = nib.Nifti1Image(np.asarray(probs, dtype=np.float32), reference.affine, header=header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    suffix = ".nii.gz" if path.name.lower().endswith(".gz") else ".nii"
    return write_file(path, lambda tmp: nib.save(image, str(tmp)), suffix=suffix)


def overlay_png(seg: Segmentation, targets: Sequence[Target]) -> bytes:
    """One row of orthogonal slices per target, its mask outlined and its clicks marked, as PNG bytes."""
    from matplotlib.figure import Figure

    image = np.asarray(seg.volume.array, dtype=np.float32)
    geometry = {"spacing_mm": seg.volume.spacing, "affine": seg.volume.affine}
    panels = []
    for t in seg.targets:
        centre = t.click if t.mask[t.click] or not t.mask.any() else target_centre(t.mask)
        title = (
            f"{t.name} (label {t.value}): {t.volume_ml:.2f} ml, expert {t.expert}, "
            f"IoU estimated by the model {t.predicted_iou:.2f}"
        )
        _, voxels, labels = check_target(targets[t.value - 1], t.value - 1, seg.volume)
        clicks = [(v, bool(lab)) for v, lab in zip(voxels, labels)]
        panels.append(
            overlay_slices(image, None, t.mask, centre=centre, title=title, clicks=clicks, **geometry)
        )
    width = max(p.shape[1] for p in panels)
    rgb = np.concatenate(
        [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
    )
    fig = Figure(figsize=(rgb.shape[1] / 100, rgb.shape[0] / 100), dpi=100)
    fig.figimage(rgb, 0, 0)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
