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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.dicom_seg import check_available, is_dicom_seg
from sammoe.data.formats import is_seg_nrrd
from sammoe.data.io import Volume, is_nifti, write_label
from sammoe.errors import ConfigError, DataError, PluginError
from sammoe.eval.overlay import overlay_slices
from sammoe.files import check_outputs, write_files
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
        """Write every named output of ``seg``, all or none: the picture and report are made first, each file
        goes to a temp file, and they are renamed into place only when all were written (a failure leaves no
        output and no temp file). ``check`` must have passed. ``report`` gets the outputs."""
        png = _picture(Path(self.png), seg, targets) if self.png else None
        segments = seg.segments()

        def labels(tmp: Path) -> None:  # the temp file exists: write_label replaces it
            write_label(tmp, seg.labels, seg.volume, overwrite=True, segments=segments, checked=True)

        contents: list[tuple[PathLike, Any, str]] = [(self.labels, labels, _format_suffix(self.labels))]
        if self.probabilities:
            probabilities = Path(self.probabilities)
            contents.append(
                (
                    probabilities,
                    _probabilities_writer(seg.probabilities, seg.volume),
                    _format_suffix(probabilities),
                )
            )
        if png is not None:
            contents.append((Path(self.png), png, ".png"))
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
            text = json.dumps(report, indent=2, allow_nan=False) + "\n"
            contents.append((self.report, text.encode("utf-8"), ""))
        write_files(contents)


def _format_suffix(path: PathLike) -> str:
    """The ending a writer chooses its format by, for the temp file's name."""
    name = str(path).lower()
    return next((s for s in (".nii.gz", ".seg.nrrd", ".nii", ".dcm") if name.endswith(s)), "")


def _picture(path: Path, seg: Segmentation, targets: Sequence[Target]) -> bytes:
    """The overlay PNG's bytes; a volume it cannot draw is one line (nothing is written then)."""
    try:
        return overlay_png(seg, targets)
    except (ValueError, IndexError, TypeError, RuntimeError) as err:
        why = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(
            f"--png {path}: cannot draw the picture of this {'x'.join(map(str, seg.volume.shape))} image "
            f"({why}); nothing was written; leave out --png"
        ) from err


def _probabilities_writer(probs: Any, reference: Volume) -> Callable[[Path], None]:
    """Foreground probabilities as float32 NIfTI on the reference's grid (one volume per target)."""
    import nibabel as nib

    header = reference.header.copy() if isinstance(reference.header, nib.Nifti1Header) else None
    image = nib.Nifti1Image(np.asarray(probs, dtype=np.float32), reference.affine, header=header)
    image.set_data_dtype(np.float32)
    image.header.set_slope_inter(1.0, 0.0)
    return lambda tmp: nib.save(image, str(tmp))


def expert_inputs() -> dict[str, Path]:
    """The files of every installed expert plugin (its weights, router, manifest and manifest function's
    module), for ``check_outputs``: no output may replace them. Found through ``discover`` (no torch)."""
    import sys
    from importlib import resources

    from sammoe.plugins import checksums
    from sammoe.plugins.discovery import discover

    found: dict[str, Path] = {}
    for record in discover(None):
        manifest = record.manifest
        if manifest is None:
            continue
        refs = {"weights": manifest.weights, "router": manifest.router}
        for what, ref in refs.items():
            if ref is None:
                continue
            try:
                found[f"expert {record.name}'s {what}"] = checksums.resolve(ref)
            except PluginError:
                continue
            if ref.package is not None:
                root = resources.files(ref.package)  # importable: resolve found the file in it
                found[f"expert {record.name}'s manifest"] = Path(str(root.joinpath("manifest.json")))
        module = sys.modules.get((record.entry_point or "").partition(":")[0])
        if getattr(module, "__file__", None):
            found[f"expert {record.name}'s module"] = Path(module.__file__)
    return found


def overlay_png(seg: Segmentation, targets: Sequence[Target]) -> bytes:
    """One row of orthogonal slices per target through its first positive click, its mask outlined and its
    clicks marked, slices and ticks named by the stored voxel indices of the input, as PNG bytes."""
    from matplotlib.figure import Figure

    image = np.asarray(seg.volume.array, dtype=np.float32)
    geometry = {"spacing_mm": seg.volume.spacing, "affine": seg.volume.affine}
    panels = []
    for t in seg.targets:
        centre = t.click  # the first positive click: its marker shows in every panel
        title = (
            f"{t.name} (label {t.value}): {t.volume_ml:.2f} ml, {t.expert} decoder, "
            f"stability {t.stability:.2f}"
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
