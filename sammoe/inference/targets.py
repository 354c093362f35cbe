"""What a user segments and what comes back: targets (clicks in voxel or world coordinates) and results on the
input grid. Validation of clicks happens here, before any model runs.

- ``Target(points, labels=None, name="", space="voxel", route=None)``: one structure to segment. ``points``
  (N, 3) clicks, ``labels`` 1 = positive (default), 0 = negative; ``space``: ``"voxel"`` (indices into the
  input array as stored: i, j, k of the NIfTI file; x, y, z index order of a DICOM series), ``"ras"`` or
  ``"lps"`` (mm); ``route``: the decoder for this target alone (``"foundation"`` or an expert's name).
- ``TargetResult``, ``Segmentation``: one target's mask, routing and stability; the label map of all targets.
- ``to_input_voxels(volume, points, space)``, ``check_target(target, index, volume)``,
  ``chosen_route(target, name, decoders)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.clicks_file import SPACES, read_clicks_file, round_voxel
from sammoe.data.io import Volume, write_label
from sammoe.errors import ConfigError, DataError

_LPS_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass
class Target:
    """Clicks on one structure. ``labels``: 1 positive, 0 negative (default: all positive)."""

    points: Any
    labels: Any = None
    name: str = ""
    space: str = "voxel"
    # the decoder for this target alone: "foundation" or a loaded expert's name (None: routed as usual)
    route: str | None = None


def read_targets(path: str | os.PathLike) -> list[Target]:
    """The targets of a clicks JSON or Slicer markups file (``sammoe.data.clicks_file``), as ``Target``s."""
    return [Target(t.points, t.labels, t.name, t.space, t.route) for t in read_clicks_file(path)]


@dataclass
class TargetResult:
    """One target's result on the input grid."""

    name: str
    value: int
    mask: np.ndarray  # bool, input grid
    probability: np.ndarray | None  # float32, input grid (when requested)
    expert: str
    # the probability per decoder that routed it: the gate's or the experts' routers' (see ``routed_by``)
    routing_probabilities: dict[str, float] | None
    iou: float  # the model's IoU head, raw (untrained in the shipped models: see ``stability``)
    clicks: int
    roi: int
    windows: int
    click: tuple[int, int, int] = (0, 0, 0)  # the centring click, input voxel indices
    voxels: int = 0  # voxels carrying this target's value in the label map (after overlaps)
    volume_ml: float = 0.0
    # "gate", "routers", "forced" (--route, ``Predictor.route``), "chosen" (the target's own ``route``);
    # None: no experts routed it
    routed_by: str | None = None
    stability: float = 0.0  # 0..1, see ``stability_score``; a confidence that needs no trained head
    # where ``mask`` can be True: the crop's footprint on the input grid (None: anywhere); work on a result
    # (the label map, visible voxels) stays inside it, so a refinement costs the crop's size, not the scan's
    box: tuple[slice, slice, slice] | None = None

    @property
    def predicted_iou(self) -> float:
        """The model's own estimate of its IoU (its IoU head), clamped to [0, 1]; not a measurement, and
        untrained in the shipped models (it reads 0.00): ``stability`` is the confidence to show."""
        return min(max(float(self.iou), 0.0), 1.0)

    @property
    def gate(self) -> dict[str, float] | None:
        """The older name of ``routing_probabilities`` (they may be the routers', not a gate's)."""
        return self.routing_probabilities

    def count_visible(self, later: list[TargetResult], volume: Volume) -> None:
        """Set ``voxels``/``volume_ml`` to what the label map shows of this target (later targets overwrite
        it where they overlap)."""
        box = self.box or (slice(None),) * 3
        visible = self.mask[box].copy()
        for other in later:
            visible &= ~other.mask[box]
        self.voxels = int(np.count_nonzero(visible))
        self.volume_ml = self.voxels * voxel_ml(volume)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.value,
            "clicks": self.clicks,
            "expert": self.expert,
            "routed_by": self.routed_by,
            "routing_probabilities": self.routing_probabilities,
            "stability": round(float(self.stability), 4),
            "voxels": self.voxels,
            "volume_ml": round(self.volume_ml, 3),
            "roi": self.roi,
            "windows": self.windows,
        }


@dataclass
class Segmentation:
    """Label map and per-target results on the input grid."""

    labels: np.ndarray
    targets: list[TargetResult]
    volume: Volume
    encodes: int
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def compose(
        cls, results: list[TargetResult], volume: Volume, encodes: int, info: dict[str, Any]
    ) -> Segmentation:
        """The label map of ``results`` in order (target i = value i + 1; later ones win where they overlap),
        with each target's visible voxels and millilitres filled in."""
        top = max((r.value for r in results), default=0)
        labels = np.zeros(volume.shape, dtype=np.uint8 if top < 256 else np.uint16)
        for r in results:
            box = r.box or (slice(None),) * 3
            labels[box][r.mask[box]] = r.value
        counts = np.bincount(labels.reshape(-1), minlength=top + 1)
        for r in results:
            r.voxels = int(counts[r.value])
            r.volume_ml = r.voxels * voxel_ml(volume)
        return cls(labels, results, volume, encodes, info)

    @property
    def probabilities(self) -> np.ndarray | None:
        """(X, Y, Z) for one target, (X, Y, Z, T) for several; None unless requested."""
        probs = [t.probability for t in self.targets]
        if not probs or any(p is None for p in probs):
            return None
        return probs[0] if len(probs) == 1 else np.stack(probs, axis=-1)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the label map on the input grid: NIfTI (``.nii``/``.nii.gz``), 3D Slicer ``.seg.nrrd``
        or, for an image read from a DICOM series, DICOM-SEG (``.dcm``), chosen by the extension. Refuses to
        replace the input image, and an existing file unless ``overwrite``."""
        return write_label(path, self.labels, self.volume, overwrite=overwrite, segments=self.segments())

    def segments(self) -> list[tuple[int, str, str]]:
        """(label value, name, description) per target, as segmentation files name their segments."""
        return [(t.value, t.name, f"sammoe {t.expert}") for t in self.targets]

    def report(self) -> dict[str, Any]:
        vol = self.volume
        return {
            "image": None if vol.path is None else str(vol.path),
            "shape": list(vol.shape),
            "spacing_mm": [round(float(s), 6) for s in vol.spacing],
            **self.info,
            "encodes": self.encodes,
            "targets": [t.summary() for t in self.targets],
        }


def voxel_ml(volume: Volume) -> float:
    return abs(float(np.linalg.det(np.asarray(volume.affine)[:3, :3]))) / 1000.0


def to_input_voxels(volume: Volume, points: Any, space: str) -> np.ndarray:
    """Clicks (N, 3) in ``space`` (voxel / ras / lps mm) -> float voxel indices of ``volume``'s array."""
    if space not in SPACES:
        raise DataError(f"unknown coordinate system {space!r}; use one of {', '.join(SPACES)}")
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if space == "voxel":
        return pts
    if space == "lps":
        pts = pts * _LPS_RAS
    inv = np.linalg.inv(np.asarray(volume.affine, dtype=np.float64))
    return pts @ inv[:3, :3].T + inv[:3, 3]


_FINE = object()


def _not_a_number(points: Any, depth: int = 0) -> Any:
    """The first coordinate that is a bool, a string or None (numpy would read them as 1.0, a number or
    NaN); ``_FINE`` when there is none. Clicks are (N, 3): nesting deeper than that is refused by shape."""
    if isinstance(points, np.ndarray):
        if points.dtype.kind in "bUSc":
            return points.reshape(-1)[0] if points.size else _FINE
        if points.dtype.kind != "O":
            return _FINE
        points = points.reshape(-1).tolist()
    if isinstance(points, (bool, np.bool_, str, bytes)) or points is None:
        return points
    if isinstance(points, (list, tuple)) and depth < 3:
        for value in points:
            odd = _not_a_number(value, depth + 1)
            if odd is not _FINE:
                return odd
    return _FINE


def check_target(target: Target, index: int, volume: Volume) -> tuple[str, np.ndarray, np.ndarray]:
    """Validate one target; returns (name, input voxel coordinates (N, 3), labels (N,))."""
    if not isinstance(target, Target):
        raise ConfigError(
            f"targets[{index}]: expected a Target, got {type(target).__name__} {str(target)[:60]}; "
            "write Target([[x, y, z]], name=...)"
        )
    name = target.name or f"target_{index + 1}"
    where = f"target {name!r}"
    odd = _not_a_number(target.points)
    if odd is not _FINE:
        raise DataError(
            f"{where}: click coordinates must be numbers [x, y, z]; got {odd!r} ({type(odd).__name__})"
        )
    if target.space not in SPACES:
        raise DataError(
            f"{where}: unknown coordinate system {target.space!r}; use one of {', '.join(SPACES)}"
        )
    try:
        pts = np.asarray(target.points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(
            f"{where}: clicks must be numbers [x, y, z] within the image; got {str(target.points)[:80]}"
        ) from None
    if pts.size == 0:
        raise DataError(f"{where}: empty click list; give at least one positive click [x, y, z]")
    if pts.ndim == 1 and pts.shape[0] == 3:
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise DataError(f"{where}: each click needs 3 coordinates [x, y, z]; got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise DataError(f"{where}: click coordinates must be finite numbers")
    if target.labels is None:
        labels = np.ones(len(pts), dtype=np.int64)
    else:
        labels = np.asarray(target.labels).reshape(-1)
        if labels.shape[0] != pts.shape[0]:
            raise DataError(
                f"{where}: {pts.shape[0]} clicks but {labels.shape[0]} labels; give one label per click"
            )
        if not np.all(np.isin(labels, (0, 1))):
            raise DataError(
                f"{where}: click labels must be 1 (positive) or 0 (negative); got {labels.tolist()}"
            )
        labels = labels.astype(np.int64)
    if not np.any(labels == 1):
        raise DataError(f"{where}: no positive click; the first positive click centres the crop")
    vox = to_input_voxels(volume, pts, target.space)
    idx = round_voxel(vox)
    shape = np.asarray(volume.shape)
    outside = np.any((idx < 0) | (idx >= shape), axis=1)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        given = ", ".join(f"{v:g}" for v in pts[k])
        unit = "voxel" if target.space == "voxel" else f"{target.space.upper()} mm"
        mapped = "" if target.space == "voxel" else f" (voxel {', '.join(f'{v:.1f}' for v in vox[k])})"
        raise DataError(
            f"{where}: click {k + 1} ({given}) {unit}{mapped} lies outside the image of shape "
            f"{'x'.join(map(str, volume.shape))}; check the coordinates and --space"
        )
    return name, vox, labels


def chosen_route(target: Target, name: str, decoders: list[str]) -> int | None:
    """The index in ``decoders`` of the decoder ``target.route`` names (None: routed as usual); a name that
    is not among them is one ConfigError naming the target and the choices."""
    route = getattr(target, "route", None)
    if route is None:
        return None
    if not isinstance(route, str) or route not in decoders:
        raise ConfigError(
            f"target {name!r}: route {route!r} is not a loaded model; choose one of {', '.join(decoders)}"
        )
    return decoders.index(route)
