"""Where a voxel of the stored array appears in napari, and back (no napari needed).

A layer gets the volume's full 4x4 voxel -> RAS mm affine (``units="mm"``), so napari's world coordinates are
RAS millimetres and anisotropic or flipped grids look right. Its data axes are the stored voxel axes, so a
click's data coordinates are the voxel indices the Predictor takes (``space="voxel"``). One exception: napari
cannot slice in 2D when the affine permutes axes (a sagittal series stored as P, I, R: the 2D part of the
transform is singular and the canvas crashes), so such arrays are shown transposed (a view, no copy) to the
axis order nearest RAS, and ``to_stored`` / ``stored`` undo that exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_IDENTITY = (0, 1, 2)


def nearest_axes(affine: np.ndarray) -> tuple[int, int, int]:
    """For each world axis (R, A, S) the stored array axis that runs most nearly along it; identity when no
    clear one-to-one match exists (an oblique grid at 45 degrees)."""
    weights = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3])
    weights = weights / np.maximum(weights.sum(axis=0, keepdims=True), 1e-12)
    perm = tuple(int(a) for a in np.argmax(weights, axis=1))
    return perm if sorted(perm) == [0, 1, 2] else _IDENTITY


@dataclass(frozen=True)
class Display:
    """How one volume is laid out in its layers: ``perm[r]`` is the stored axis shown as layer axis r."""

    perm: tuple[int, int, int]
    affine: np.ndarray  # layer data -> RAS mm (4x4), the stored affine with its columns permuted

    @classmethod
    def of(cls, affine: np.ndarray) -> Display:
        affine = np.asarray(affine, dtype=np.float64)
        perm = nearest_axes(affine)
        shown = affine.copy()
        shown[:3, :3] = affine[:3, list(perm)]
        return cls(perm, shown)

    @classmethod
    def as_is(cls, affine: np.ndarray) -> Display:
        """A layer that is already shown (its own axes and affine kept)."""
        return cls(_IDENTITY, np.asarray(affine, dtype=np.float64))

    @property
    def inverse(self) -> tuple[int, int, int]:
        return tuple(int(a) for a in np.argsort(self.perm))  # type: ignore[return-value]

    def view(self, stored: np.ndarray) -> np.ndarray:
        """The stored array in layer axis order (a view: writing to it writes the stored array)."""
        return stored if self.perm == _IDENTITY else stored.transpose(self.perm)

    def stored(self, shown: np.ndarray) -> np.ndarray:
        """A layer array back in stored axis order (a view)."""
        return shown if self.perm == _IDENTITY else shown.transpose(self.inverse)

    def to_stored(self, points: np.ndarray) -> np.ndarray:
        """Layer data coordinates (N, 3) -> stored voxel indices (N, 3)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return points[:, list(self.inverse)]

    def to_layer(self, points: np.ndarray) -> np.ndarray:
        """Stored voxel indices (N, 3) -> layer data coordinates (N, 3)."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        return points[:, list(self.perm)]
