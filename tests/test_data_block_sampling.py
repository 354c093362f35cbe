"""The axis-aligned fast path of nearest-neighbour sampling equals scipy's order-0 affine_transform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sammoe.data.block_sampling import sample_nearest


def _scipy(source, linear, offset, shape):
    return ndimage.affine_transform(
        source, linear, offset=offset, output_shape=shape, order=0, mode="constant"
    )


def _random_axis_map(rng) -> np.ndarray:
    perm = rng.permutation(3)
    linear = np.zeros((3, 3))
    # spacing ratios as they occur (1.5 mm crops on 0.7-5 mm grids), signs for flipped axes
    linear[perm, np.arange(3)] = rng.choice([1 / 1.5, 0.7 / 1.5, 5 / 1.5, 1.0, 0.5]) * rng.choice([-1, 1], 3)
    return linear


@pytest.mark.parametrize("seed", range(40))
def test_axis_aligned_maps_agree_with_scipy_voxel_for_voxel(seed):
    rng = np.random.default_rng(seed)
    source = rng.integers(0, 4, size=tuple(rng.integers(5, 20, 3))).astype(np.uint8)
    linear = _random_axis_map(rng)
    shape = tuple(rng.integers(4, 30, 3))
    # offsets on and next to half-integers and the source's edges, where rounding and bounds decide
    offset = rng.choice([-0.5, 0.5, 0.0, 3.5, -2.0], 3) + rng.choice([0.0, 1e-9, -1e-9, 0.25], 3)
    offset += np.where(linear.sum(1) < 0, np.array(source.shape) - 1, 0)  # flipped axes start at the far end
    np.testing.assert_array_equal(
        sample_nearest(source, linear, offset, shape), _scipy(source, linear, offset, shape)
    )


def test_oblique_maps_fall_back_to_scipy_and_uint16_values_survive():
    rng = np.random.default_rng(0)
    source = rng.integers(0, 60000, size=(9, 10, 11)).astype(np.uint16)
    angle = 0.3
    linear = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]])
    offset = np.array([1.0, -2.0, 0.5])
    got = sample_nearest(source, linear, offset, (12, 12, 12))
    np.testing.assert_array_equal(got, _scipy(source, linear, offset, (12, 12, 12)))
    flipped = np.diag([-1.0, 1.0, 0.5])
    got = sample_nearest(source, flipped, np.array([8.0, 0.0, 0.0]), (9, 10, 22))
    assert (
        got.dtype == np.uint16
        and got.max() == _scipy(source, flipped, np.array([8.0, 0, 0]), (9, 10, 22)).max()
    )


@pytest.mark.parametrize("seed", range(20))
def test_linear_axis_aligned_maps_agree_with_scipy(seed):
    from sammoe.data.block_sampling import sample_linear

    rng = np.random.default_rng(seed)
    source = rng.random(tuple(rng.integers(5, 20, 3))).astype(np.float32)
    linear = _random_axis_map(rng)
    shape = tuple(rng.integers(4, 30, 3))
    offset = rng.choice([-0.5, 0.5, 0.0, 3.5, -2.0], 3) + rng.choice([0.0, 1e-9, -1e-9, 0.25], 3)
    offset += np.where(linear.sum(1) < 0, np.array(source.shape) - 1, 0)
    expected = ndimage.affine_transform(
        source.astype(np.float64), linear, offset=offset, output_shape=shape, order=1, mode="constant"
    )
    np.testing.assert_allclose(sample_linear(source, linear, offset, shape), expected, atol=2e-6)
