"""Lazy resampling agrees with Preprocessor.resample (torchio Resample + ToCanonical) window by window.

Tolerance: grid shape exact, grid affine within 1e-9 mm, voxel values within 1e-6 x the image's range (float32
round-off: the lazy path interpolates in float32, SimpleITK in double then casts; observed <= 1e-7), padding
outside the grid exactly 0.
"""

from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest
import torch

from sammoe.data import lazy_resample
from sammoe.data.io import Volume, read_image
from sammoe.data.lazy_resample import LazyResampled, resampled_grid
from sammoe.data.phantoms import make_phantom_case
from sammoe.data.preprocess import Preprocessor, Resampled, crop_or_pad

REL_TOL = 1e-6


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def _phantom(lps: bool = False) -> Volume:
    image, _, affine = make_phantom_case(3, lps=lps)
    return Volume(image, affine)


def _permuted() -> Volume:
    image, _, affine = make_phantom_case(4, shape=(40, 56, 30))
    perm = (2, 0, 1)
    out = np.eye(4)
    out[:3, :3] = affine[:3, :3][:, perm]
    out[:3, 3] = affine[:3, 3]
    return Volume(np.ascontiguousarray(np.transpose(image, perm)), out)


def _oblique() -> Volume:
    image, _, affine = make_phantom_case(5, shape=(48, 40, 32))
    out = affine.copy()
    out[:3, :3] = _rotation(2, 0.3) @ _rotation(0, -0.2) @ affine[:3, :3]
    out[:3, 3] += (3.3, -2.1, 7.7)
    return Volume(image, out)


def _oblique_flipped() -> Volume:
    """Rotated 0.9 rad about y with L and I axes: ToCanonical permutes as well as flips."""
    image, _, affine = make_phantom_case(6, shape=(36, 44, 28))
    out = affine.copy()
    out[:3, :3] = _rotation(1, 0.9) @ np.diag([-1.0, 1.0, -1.0]) @ affine[:3, :3]
    return Volume(image, out)


def _random(shape, spacing, dtype=np.float32, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 50.0, shape).astype(dtype)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-17.25, 40.5, 3.125)
    return Volume(image, affine)


CASES = {
    "phantom_ras": lambda: _phantom(),
    "phantom_lps": lambda: _phantom(lps=True),
    "permuted_axes": _permuted,
    "oblique": _oblique,
    "oblique_flipped": _oblique_flipped,
    "odd_finer": lambda: _random((37, 51, 23), (0.6, -0.7, 0.45)),  # downsampled, y flipped
    # upsampled, so the first/last planes fall in the half-voxel border band
    "odd_coarser_float64": lambda: _random((31, 29, 17), (-3.1, 2.2, 4.0), np.float64),
    "int16_mixed": lambda: _random((45, 33, 19), (0.9, 1.1, 2.0), np.int16),
    "singleton_axis": lambda: _random((20, 1, 9), (0.5, 2.0, 1.0)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    volume = CASES[request.param]()
    return volume, Preprocessor().resample(volume)


def _windows(shape, size):
    """Start indices: inside, overlapping each face, each corner, fully outside (each side, and one axis)."""
    shape, size = np.asarray(shape), np.asarray(size)
    centre = (shape - size) // 2
    yield centre
    for axis in range(3):
        for start in (-(size[axis] // 2), shape[axis] - size[axis] // 2):
            s = centre.copy()
            s[axis] = start
            yield s
    for corner in itertools.product(*[(-(n // 2), g - n // 2) for g, n in zip(shape, size)]):
        yield np.asarray(corner)
    yield shape + 3
    yield -size - 5
    s = centre.copy()
    s[1] = shape[1] + 1
    yield s


def _check_window(lazy: LazyResampled, full: Resampled, start, size) -> None:
    want = crop_or_pad(full.image, start, size)
    got = lazy.region(start, size)
    assert got.dtype == np.float32 and got.shape == tuple(size)
    span = float(full.image.max() - full.image.min()) or 1.0
    diff = float(np.abs(got - want).max()) if got.size else 0.0
    assert diff <= REL_TOL * span, f"start {start}: max |diff| {diff:.3g} > {REL_TOL} x range {span:.3g}"
    # crop_or_pad's padding is exact
    outside = crop_or_pad(np.ones(full.shape, dtype=bool), start, size) == 0
    assert np.all(got[outside] == 0)


def test_grid_matches_torchio(case):
    volume, full = case
    shape, affine = resampled_grid(volume.affine, volume.shape)
    assert shape == full.shape
    np.testing.assert_allclose(affine, full.affine, rtol=0, atol=1e-9)
    lazy = LazyResampled(volume)
    assert lazy.shape == full.shape and lazy.label is None and lazy.path == volume.path
    assert lazy.orig_shape == full.orig_shape
    np.testing.assert_array_equal(lazy.orig_affine, full.orig_affine)
    points = np.array([[0.0, 0.0, 0.0], [3.2, 1.5, 7.9]])
    np.testing.assert_allclose(lazy.input_to_ras(points), full.input_to_ras(points), atol=1e-9)
    np.testing.assert_allclose(lazy.world_to_ras(points), full.world_to_ras(points), atol=1e-9)


def test_regions_match_crop_or_pad(case):
    volume, full = case
    lazy = LazyResampled(volume)
    size = tuple(min(32, max(n, 1)) for n in full.shape)
    for start in _windows(full.shape, size):
        _check_window(lazy, full, start, size)
    _check_window(lazy, full, (-3, -3, -3), tuple(n + 6 for n in full.shape))  # the window holds the grid


def test_materialise_is_the_full_resample(case):
    volume, full = case
    out = LazyResampled(volume).materialise()
    assert isinstance(out, Resampled) and out.label is None and out.image.dtype == np.float32
    assert out.shape == full.shape and out.orig_shape == full.orig_shape
    span = float(full.image.max() - full.image.min()) or 1.0
    assert float(np.abs(out.image - full.image).max()) <= REL_TOL * span
    np.testing.assert_allclose(out.affine, full.affine, atol=1e-9)


@pytest.mark.shared_data
def test_colin27_mri(shared_dir):
    path = shared_dir / "data" / "colin27" / "ch2.nii.gz"
    volume = read_image(path)
    full = Preprocessor().resample(volume)
    lazy = LazyResampled(volume)
    assert lazy.shape == full.shape
    np.testing.assert_allclose(lazy.affine, full.affine, atol=1e-9)
    centre = np.asarray(full.shape) // 2 - 64
    for start in [centre, (-64, -64, -64), np.asarray(full.shape) - 64, (-20, 50, 100)]:
        _check_window(lazy, full, start, (128, 128, 128))


def test_anisotropic_target_spacing():
    volume = _random((45, 33, 19), (-0.8, 1.1, 2.0), seed=2)
    target = (1.0, 1.5, 2.0)
    full = Preprocessor(target).resample(volume)
    lazy = LazyResampled(volume, target)
    assert lazy.shape == full.shape
    np.testing.assert_allclose(lazy.affine, full.affine, atol=1e-9)
    for start in [(0, 0, 0), (-5, 10, 3), (30, -4, 12)]:
        _check_window(lazy, full, start, (16, 16, 16))


def test_border_rule_matches_simpleitk():
    """Sampling points from 1.2 voxels before the first centre to 0.2 after the last (SimpleITK via torchio):
    the edge value within half a voxel of the first/last centre, 0 beyond."""
    import torchio as tio

    rng = np.random.default_rng(1)
    n = 6
    image = rng.uniform(1.0, 10.0, (n, 3, 2)).astype(np.float32)
    step = 0.05
    count = int(round((n + 1.4) / step))
    grid = np.diag([2.0 * step, 3.0, 4.0, 1.0])
    grid[0, 3] = -1.2 * 2.0
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=np.diag([2.0, 3, 4, 1]))
    )
    want = tio.Resample(((count, 3, 2), grid))(subject)["image"].data[0, :, 1, 1].numpy()
    coord = -1.2 + step * np.arange(count)
    inside, i0, i1, w = lazy_resample._linear_taps(coord, n)
    line = image[:, 1, 1].astype(np.float64)
    got = np.where(inside, line[i0] + (line[i1] - line[i0]) * w, 0.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert want[coord < -0.5 - 1e-9].max() == 0 and want[coord > n - 0.5 + 1e-9].max() == 0


def test_chunked_sampling_and_int_size(monkeypatch):
    volume = _random((60, 50, 40), (0.5, 0.6, 0.7), seed=3)
    lazy = LazyResampled(volume)
    whole = lazy.region((-2, 3, 1), 24)
    monkeypatch.setattr(lazy_resample, "_CHUNK_VOXELS", 5000)  # many slabs
    np.testing.assert_array_equal(lazy.region((-2, 3, 1), (24, 24, 24)), whole)
    full = Preprocessor().resample(volume)
    _check_window(lazy, full, (-2, 3, 1), (24, 24, 24))


def test_region_memory_is_bounded_by_the_window():
    """A small window allocates far less than the resampled volume (no full-grid temporaries)."""
    volume = Volume(
        np.asfortranarray(_phantom().array), _phantom().affine
    )  # NIfTI arrays are Fortran-ordered
    lazy = LazyResampled(volume)
    full_bytes = int(np.prod(lazy.shape)) * 4
    tracemalloc.start()
    try:
        lazy.region(np.asarray(lazy.shape) // 2 - 16, 32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.2 * full_bytes, f"peak {peak} bytes for a 32^3 window, full grid {full_bytes} bytes"
