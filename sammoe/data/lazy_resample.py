"""Lazy resampling: the preprocessing grid from the header alone, voxels sampled only where a crop needs them.

``Preprocessor.resample`` (torchio ``Resample(target_spacing)`` + ``ToCanonical()``) interpolates the whole
volume although an interactive click needs one 128^3 window. This module reproduces that result window by
window: opening a volume costs a header computation, each ``region`` samples only its own grid points.

Public API
----------
- ``resampled_grid(affine, shape, target_spacing=(1.5, 1.5, 1.5)) -> (grid_shape, grid_affine)``: the exact
  output grid (shape, RAS+ voxel -> mm affine after ``ToCanonical``) of ``Preprocessor(target_spacing)
  .resample``, from the header only.
- ``LazyResampled(volume, target_spacing=(1.5, 1.5, 1.5))``: what ``Resampled`` offers its users (``affine``,
  ``shape``, ``orig_affine``, ``orig_shape``, ``label`` (None), ``path``, ``input_to_ras``, ``world_to_ras``)
  without an ``image``; ``region(start, size)`` gives ``crop_or_pad(Preprocessor.resample(volume).image,
  start, size)`` (float32) and ``materialise()`` the full ``Resampled``.

How torchio builds the grid (torchio 1.2, ``Resample.get_reference_image``): the output keeps the input's
direction cosines (so the map output index -> input index is a per-axis scale and shift, whatever the
obliquity), has size ``floor(n * spacing / target)`` per input axis (1 stays 1) and the same centre as the
input's first-to-last voxel centres. ``ToCanonical`` then flips/permutes the axes with nibabel's
``io_orientation`` (closest to RAS+). SimpleITK's linear interpolator (checked against torchio point by point
in the tests): continuous index c along an axis of n voxels is sampled when -0.5 <= c < n - 0.5, with c
clamped to [0, n - 1] (the edge voxel's value in the half-voxel border band), and gives 0 (the default value)
beyond; it computes in double and casts to float32. The grid built this way lies strictly inside that band, so
the band rule only matters for the first/last planes when upsampling; zeros outside the grid are
``crop_or_pad``'s padding. Interpolation here is separable (trilinear = three 1D linear passes in ITK's
v0 + (v1 - v0) * d form, in float32: 3x faster than float64), so results agree with torchio to float32
round-off (<= 1e-7 of the image's range in the tests; the grid affine to ~1e-14 mm). Memory: one window plus
the source box it reads (in slabs when that box is large), never the whole resampled grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.io import Volume
from sammoe.data.preprocess import Resampled, apply_affine

Triple = tuple[int, int, int]

# Source voxels one interpolation step may gather at once; larger windows (very fine source spacing) are
# processed in slabs so temporaries stay ~100 MB whatever the ROI.
_CHUNK_VOXELS = 8_000_000


def _spacing_triple(target_spacing: float | Sequence[float]) -> np.ndarray:
    if isinstance(target_spacing, (int, float, np.integer, np.floating)):
        values = [float(target_spacing)] * 3
    else:
        values = [float(v) for v in target_spacing]
    if len(values) != 3 or min(values) <= 0:
        raise ValueError(f"target_spacing must be one positive value or three, got {target_spacing!r}")
    return np.array(values, dtype=np.float64)


def _pre_canonical_grid(affine: np.ndarray, shape: Sequence[int], target: np.ndarray) -> tuple:
    """torchio's ``Resample`` output grid (before ``ToCanonical``): same direction, floored size, same centre.

    The spacing and size use torchio's own float64 expressions so ``floor`` decides borderline sizes (e.g.
    100 * 1.5 / 1.5) the same way.
    """
    rot_zoom = affine[:3, :3]
    spacing = np.sqrt(np.sum(rot_zoom * rot_zoom, axis=0))
    direction = rot_zoom / spacing
    old_size = np.array([int(s) for s in shape])
    new_size = np.floor(old_size * spacing / target)
    new_size[old_size == 1] = 1  # torchio keeps singleton axes
    # Centre of the first and last voxel centres; the new grid is centred there (exact sign flips between
    # LPS and RAS commute with all of this, so it is done in RAS).
    first = affine[:3, 3]
    last = first + rot_zoom @ (old_size - 1).astype(np.float64)
    centre = (first + last) / 2.0
    half_extent = (new_size - 1) / 2.0 * target
    out = np.eye(4)
    out[:3, :3] = direction * target
    out[:3, 3] = centre - direction @ half_extent
    return tuple(int(s) for s in new_size), out


def _to_canonical(shape: Triple, affine: np.ndarray) -> tuple[Triple, np.ndarray]:
    """Shape and affine after torchio's ``ToCanonical`` (nibabel's closest-RAS+ flip/permutation)."""
    from nibabel import orientations

    if "".join(orientations.aff2axcodes(affine)) == "RAS":
        return shape, affine  # torchio skips the transform entirely
    current = orientations.io_orientation(affine)
    transform = orientations.ornt_transform(current, orientations.axcodes2ornt("RAS"))
    new_shape = [0, 0, 0]
    for axis, (dest, _flip) in enumerate(transform):
        new_shape[int(dest)] = int(shape[axis])
    return tuple(new_shape), affine @ orientations.inv_ornt_aff(transform, shape)  # type: ignore[return-value]


def resampled_grid(
    affine: Any, shape: Sequence[int], target_spacing: float | Sequence[float] = (1.5, 1.5, 1.5)
) -> tuple[Triple, np.ndarray]:
    """The grid ``Preprocessor(target_spacing).resample`` produces for an image of ``shape`` and voxel -> RAS
    mm ``affine``: ``(grid_shape, grid_affine)`` with the RAS+ (canonical) voxel order. Header only.

    ``target_spacing`` applies per input axis, as torchio does (before the reorientation).
    """
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or len(shape) != 3:
        raise ValueError(f"expected a 4x4 affine and a 3D shape, got {affine.shape} and {tuple(shape)}")
    pre_shape, pre_affine = _pre_canonical_grid(affine, shape, _spacing_triple(target_spacing))
    return _to_canonical(pre_shape, pre_affine)


def _axis_maps(src_affine: np.ndarray, grid_affine: np.ndarray) -> list[tuple[int, float, float]]:
    """For each grid (canonical) axis k: (source axis p, scale, shift) with source index
    c_p = scale * u_k + shift.

    The torchio grid shares the source's direction cosines, so grid index -> source index is a scaled signed
    permutation; anything else means the grid did not come from ``resampled_grid``.
    """
    matrix = np.linalg.inv(src_affine) @ grid_affine
    block = matrix[:3, :3]
    maps, used = [], set()
    for k in range(3):
        p = int(np.argmax(np.abs(block[:, k])))
        scale = float(block[p, k])
        rest = np.delete(block[:, k], p)
        if p in used or scale == 0 or np.max(np.abs(rest)) > 1e-9 * abs(scale):
            raise ValueError(
                "grid is not axis-aligned with the source volume; it must come from resampled_grid"
            )
        used.add(p)
        maps.append((p, scale, float(matrix[p, 3])))
    return maps


def _linear_taps(coord: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """SimpleITK's 1D linear interpolation rule for continuous indices ``coord`` on an axis of ``n`` voxels.

    Returns (inside, i0, i1, w): value = v[i0] + (v[i1] - v[i0]) * w where ``inside`` (-0.5 <= c < n - 0.5),
    else the default value 0. Clamping c to [0, n - 1] gives the edge voxel in the border band, exactly
    (w = 0).
    """
    inside = (coord >= -0.5) & (coord < n - 0.5)
    clamped = np.clip(coord, 0.0, max(n - 1, 0))
    i0 = np.floor(clamped).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = clamped - i0
    return inside, i0, i1, w


# Relative cost per output element of one linear pass along memory axis 0 (outermost), 1, 2 (contiguous),
# measured with numpy on C-ordered float32 blocks.
_PASS_COST = (1.0, 1.3, 1.45)


def _pass_cost(order: Sequence[int], extent: Sequence[int], counts: Sequence[int]) -> float:
    shape, cost = list(extent), 0.0
    for j in order:
        shape[j] = counts[j]
        cost += float(np.prod(shape)) * _PASS_COST[j]
    return cost


def _sample_block(source: Any, mem: list[int], taps: list, order: Sequence[int]) -> np.ndarray:
    """Linear passes over the source box the taps touch; ``taps``/``order`` index memory-order axes
    ``mem``."""
    box = [slice(0, 0)] * 3
    for j, (i0, i1, _) in enumerate(taps):
        box[mem[j]] = slice(int(i0.min()), int(i1.max()) + 1)
    # Only that box is read (memory-mapped sources too); float32 first, as Preprocessor.resample casts the
    # source to float32 before interpolating.
    block = np.asarray(source[tuple(box)].transpose(mem), dtype=np.float32)
    for j in order:
        i0, i1, w = taps[j]
        shape = [1, 1, 1]
        shape[j] = len(w)
        origin = box[mem[j]].start
        a = np.take(block, i0 - origin, axis=j)
        b = np.take(block, i1 - origin, axis=j)
        # ITK's form v0 + (v1 - v0) * d, in place; float32 arithmetic stays within ~1 ulp of ITK's double
        # and is 3x faster
        np.subtract(b, a, out=b)
        b *= w.astype(np.float32).reshape(shape)
        b += a
        block = b
    return block


class LazyResampled:
    """A volume on the preprocessing grid (target spacing, RAS+) whose voxels are computed on demand.

    Same geometry and click mapping as the ``Resampled`` that
    ``Preprocessor(target_spacing).resample(volume)`` returns; no ``image`` array: ``region(start, size)``
    samples one window, ``materialise()`` everything.
    The source ``volume`` is kept (read, never copied whole).
    """

    def __init__(self, volume: Volume, target_spacing: float | Sequence[float] = (1.5, 1.5, 1.5)) -> None:
        if np.ndim(volume.array) != 3:
            raise ValueError(f"{volume.path}: expected a 3D volume, got shape {np.shape(volume.array)}")
        self.volume = volume
        self.target_spacing = tuple(float(v) for v in _spacing_triple(target_spacing))
        self.orig_affine = np.asarray(volume.affine, dtype=np.float64)
        self.orig_shape: Triple = volume.shape
        grid_shape, self.affine = resampled_grid(self.orig_affine, self.orig_shape, self.target_spacing)
        self._shape: Triple = grid_shape
        self.label: np.ndarray | None = None
        self.path: Path | None = volume.path
        self._maps = _axis_maps(self.orig_affine, self.affine)

    @property
    def shape(self) -> Triple:
        return self._shape

    def input_to_ras(self, points: Any) -> np.ndarray:
        """Input voxel indices (N, 3) -> float voxel indices on this grid."""
        return apply_affine(np.linalg.inv(self.affine) @ self.orig_affine, points)

    def world_to_ras(self, points_mm: Any) -> np.ndarray:
        """RAS+ world mm -> float voxel indices on this grid."""
        return apply_affine(np.linalg.inv(self.affine), points_mm)

    def __repr__(self) -> str:
        return f"LazyResampled(path={self.path}, shape={self.shape}, target_spacing={self.target_spacing})"

    # -------------------------------------------------------------------------------------------- sampling
    def region(self, start: Sequence[int], size: Sequence[int] | int) -> np.ndarray:
        """``crop_or_pad(resampled_image, start, size)`` (float32, shape ``size``) sampled from the source:
        grid voxels ``start .. start + size`` (canonical order), 0 where the window leaves the grid."""
        start_a = np.asarray(start, dtype=np.int64).reshape(3)
        size_t = (int(size),) * 3 if np.ndim(size) == 0 else tuple(int(s) for s in size)  # type: ignore[arg-type]
        if len(size_t) != 3 or min(size_t) < 0:
            raise ValueError(f"size must be one non-negative int or three, got {size!r}")
        out = np.zeros(size_t, dtype=np.float32)
        # Per grid axis: the window's grid indices inside the grid and inside the source's sampling band.
        taps, dst = [], []
        for k, (p, scale, shift) in enumerate(self._maps):
            lo, hi = max(int(start_a[k]), 0), min(int(start_a[k]) + size_t[k], self._shape[k])
            if hi <= lo:
                return out
            u = np.arange(lo, hi, dtype=np.float64)
            inside, i0, i1, w = _linear_taps(scale * u + shift, self.orig_shape[p])
            if not inside.any():
                return out
            # c is monotonic in u, so the sampled part is one run of indices
            keep = np.flatnonzero(inside)
            first, last = int(keep[0]), int(keep[-1]) + 1
            taps.append((i0[first:last], i1[first:last], w[first:last]))
            dst.append(slice(lo + first - int(start_a[k]), lo + last - int(start_a[k])))
        out[tuple(dst)] = self._sample(taps)
        return out

    def _sample(self, taps: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
        """Tensor-product linear interpolation; ``taps[k]`` are grid axis k's source taps (i0, i1, w).

        Works in the source's memory order (NIfTI arrays are Fortran-ordered: gathering along a strided axis
        is ~1.5x slower per element) and picks the pass order with the least work; slabs along the last pass
        keep temporaries bounded for very fine sources.
        """
        source = self.volume.array
        axis_of = [p for p, _, _ in self._maps]  # grid axis k -> source axis
        by_source = [taps[axis_of.index(p)] for p in range(3)]
        strides = np.abs(np.asarray(getattr(source, "strides", (0, 0, 0)), dtype=np.int64))
        mem = [int(a) for a in np.argsort(-strides, kind="stable")]  # source axes, outermost first
        mtaps = [by_source[p] for p in mem]
        extent = [int(i1.max()) - int(i0.min()) + 1 for i0, i1, _ in mtaps]
        counts = [len(w) for _, _, w in mtaps]
        order = min(permutations(range(3)), key=lambda o: _pass_cost(o, extent, counts))
        last = order[-1]
        block_voxels = int(np.prod(extent, dtype=np.int64))
        step = max(1, int(counts[last] * _CHUNK_VOXELS // max(block_voxels, 1)))
        pieces = []
        for lo in range(0, counts[last], step):
            part = list(mtaps)
            part[last] = tuple(a[lo : lo + step] for a in mtaps[last])
            pieces.append(_sample_block(source, mem, part, order))
        block = pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=last)
        # memory-order axes -> grid (canonical) axes
        return np.transpose(block, [mem.index(p) for p in axis_of])

    def materialise(self) -> Resampled:
        """The full ``Resampled`` (what ``Preprocessor.resample`` returns, ``label`` None), built by the same
        sampling; for the callers that need whole arrays (sliding window over the volume, evaluation)."""
        return Resampled(
            image=self.region((0, 0, 0), self._shape),
            affine=self.affine.copy(),
            orig_affine=self.orig_affine.copy(),
            orig_shape=self.orig_shape,
            label=None,
            path=self.path,
        )
