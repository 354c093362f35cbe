"""Dice and NSD on the original grid: hand-computable values, anisotropic spacing, the empty-GT rule."""

import math

import numpy as np
import pytest

from sammoe.errors import DataError
from sammoe.eval import dice, dice_nsd, nsd


def box(shape, lo, ext):
    a = np.zeros(shape, bool)
    a[tuple(slice(lo_, lo_ + e) for lo_, e in zip(lo, ext))] = True
    return a


def nsd_shifted_box(ext_mm, shift_mm, tol_mm):
    """Continuum NSD of a box of extents (Lx, Ly, Lz) mm against itself shifted by D mm along x.

    Each surface: the far x face is within tolerance only in a rim of width tol; the side faces are within
    tolerance where x >= D - tol; the near x face is never within tolerance (D > tol). Same for both boxes.
    """
    lx, ly, lz = ext_mm
    d, t = shift_mm, tol_mm
    if d <= t:
        return 1.0
    good = ly * lz - (ly - 2 * t) * (lz - 2 * t) + 2 * (ly + lz) * (lx - d + t)
    return good / (2 * (ly * lz + lx * lz + lx * ly))


G = box((40, 40, 40), (5, 5, 5), (20, 20, 20))


def test_dice_hand_values():
    p = box((10, 10, 10), (0, 0, 0), (4, 4, 4))  # 64 voxels
    g = box((10, 10, 10), (2, 0, 0), (4, 4, 4))  # 64 voxels, 32 shared
    assert dice(p, g) == pytest.approx(2 * 32 / 128)
    assert dice(g, g) == 1.0
    assert dice(p, box((10, 10, 10), (6, 6, 6), (2, 2, 2))) == 0.0


def test_identical_masks_give_one():
    assert nsd(G, G, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert nsd(G, G, (0.7, 1.3, 4.0), tolerance_mm=0.0) == pytest.approx(1.0)


def test_empty_ground_truth_rule():
    empty = np.zeros_like(G)
    # empty GT & empty prediction -> NaN, empty GT with a prediction -> 0, GT with empty prediction -> 0
    assert math.isnan(dice(empty, empty)) and math.isnan(nsd(empty, empty, (1, 1, 1)))
    assert dice(G, empty) == 0.0 and nsd(G, empty, (1, 1, 1)) == 0.0
    assert dice(empty, G) == 0.0 and nsd(empty, G, (1, 1, 1)) == 0.0
    d, s = dice_nsd(empty, empty, (2, 2, 2))
    assert math.isnan(d) and math.isnan(s)


def test_far_apart_is_zero_and_nsd_is_symmetric():
    a = box((40, 40, 40), (0, 0, 0), (10, 10, 10))
    b = box((40, 40, 40), (25, 25, 25), (10, 10, 10))
    assert nsd(a, b, (1, 1, 1)) == 0.0
    p = box((40, 40, 40), (7, 5, 5), (20, 20, 20))
    assert nsd(p, G, (1.5, 1, 1)) == pytest.approx(nsd(G, p, (1.5, 1, 1)), abs=1e-6)


@pytest.mark.parametrize("shift", [2, 3, 5])
def test_shifted_box_matches_hand_computation(shift):
    g = box((64, 64, 64), (10, 10, 10), (40, 40, 40))
    p = box((64, 64, 64), (10 + shift, 10, 10), (40, 40, 40))
    expected = nsd_shifted_box((40, 40, 40), shift, 1.0)
    # surfels sit on the voxel-corner grid, so the discrete value exceeds the continuum one by O(1/L)
    assert nsd(p, g, (1, 1, 1)) == pytest.approx(expected, abs=0.025)
    assert nsd(p, g, (1, 1, 1)) < 1.0


def test_anisotropic_spacing_matters():
    p = box((40, 40, 40), (7, 5, 5), (20, 20, 20))  # shifted 2 voxels along axis 0
    # 2 voxels x 0.5 mm = 1.0 mm: every surface point is within the 1 mm tolerance
    assert nsd(p, G, (0.5, 1, 1)) == pytest.approx(1.0)
    # 2 voxels x 3 mm = 6 mm along a 60 mm side
    assert nsd(p, G, (3, 1, 1)) == pytest.approx(nsd_shifted_box((60, 20, 20), 6.0, 1.0), abs=0.025)
    # the same shift along axis 1 with 0.5 mm on axis 0 is 2 mm: spacing is per axis, in array order
    q = box((40, 40, 40), (5, 7, 5), (20, 20, 20))
    assert nsd(q, G, (0.5, 1, 1)) < 0.9
    assert nsd(q, G, (1, 0.5, 1)) == pytest.approx(1.0)
    # a wider tolerance forgives more
    assert nsd(p, G, (3, 1, 1), tolerance_mm=6.0) == pytest.approx(1.0)


def test_mask_touching_the_grid_border():
    g = box((20, 20, 20), (0, 0, 0), (10, 20, 20))
    assert nsd(g, g, (1, 1, 1)) == pytest.approx(1.0)
    assert 0.0 < nsd(box((20, 20, 20), (0, 0, 0), (13, 20, 20)), g, (1, 1, 1)) < 1.0


def test_accepts_torch_and_integer_masks():
    torch = pytest.importorskip("torch")
    p = box((40, 40, 40), (7, 5, 5), (20, 20, 20))
    assert dice(torch.from_numpy(p), G.astype(np.uint8)) == pytest.approx(dice(p, G))
    assert nsd(torch.from_numpy(p), G.astype(np.uint8), (3, 1, 1)) == pytest.approx(nsd(p, G, (3, 1, 1)))


def test_bad_input_is_a_clear_error():
    with pytest.raises(DataError, match="shape"):
        dice(G, G[:-1])
    with pytest.raises(DataError, match="3D"):
        dice(G[0], G[0])
    with pytest.raises(DataError, match="spacing"):
        nsd(G, G, (1, 1))
    with pytest.raises(DataError, match="spacing"):
        nsd(G, G, (1, 0, 1))


def test_matches_deepmind_surface_distance_when_installed():
    """The official evaluation calls DeepMind's `surface-distance`; not a dependency, checked when present."""
    sd = pytest.importorskip("surface_distance")
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for i in range(4):
        g = ndimage.gaussian_filter(rng.random((30, 36, 24)), 3) > 0.52
        p = (
            ndimage.binary_dilation(g, iterations=1 + i % 2)
            if i % 2
            else ndimage.gaussian_filter(rng.random((30, 36, 24)), 3) > 0.52
        )
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        ref = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(g, p, spacing), 1.0)
        assert nsd(p, g, spacing) == pytest.approx(ref, abs=1e-5)


def test_the_protocol_scores_a_mask_it_has_seen_from_its_memo(monkeypatch):
    """Models evaluated on one target share a memo: a mask another model produced (a MoE that picked the
    foundation decoder) is not scored again; a different mask is, and the values are the plain metrics'."""
    import sammoe.inference.protocol as protocol

    calls = []
    plain = protocol.dice_nsd
    monkeypatch.setattr(protocol, "dice_nsd", lambda *a, **k: calls.append(1) or plain(*a, **k))
    target = np.zeros((20, 20, 12), bool)
    target[5:15, 4:14, 3:9] = True
    one, other = np.zeros_like(target), np.zeros_like(target)
    one[6:15, 4:14, 3:9] = True
    other[5:15, 4:13, 3:9] = True
    memo: dict = {}
    first = protocol._metrics(one, target, (1.0, 1.0, 2.0), 1.0, memo)
    again = protocol._metrics(one.copy(), target, (1.0, 1.0, 2.0), 1.0, memo)
    assert first == again == plain(one, target, (1.0, 1.0, 2.0), 1.0) and len(calls) == 1
    assert protocol._metrics(other, target, (1.0, 1.0, 2.0), 1.0, memo) == plain(
        other, target, (1.0, 1.0, 2.0), 1.0
    )
    assert len(calls) == 2 and len(memo) == 2
    protocol._metrics(one, target, (1.0, 1.0, 2.0), 1.0, None)  # no memo: always scored
    assert len(calls) == 3
