"""Slice overlays: three orthogonal slices through the target with GT/prediction contours."""

import numpy as np
import pytest

from sammoe.errors import DataError
from sammoe.eval import overlay_slices, target_centre


def volume():
    z, y, x = np.mgrid[:24, :32, :28]
    image = np.sin(x / 3.0) + 0.1 * z
    gt = (z - 14) ** 2 + (y - 10) ** 2 + (x - 18) ** 2 < 25
    pred = (z - 13) ** 2 + (y - 11) ** 2 + (x - 17) ** 2 < 30
    return image, gt, pred


def test_overlay_returns_rgb_and_writes_png(tmp_path):
    image, gt, pred = volume()
    out = tmp_path / "sub" / "overlay.png"
    rgb = overlay_slices(image, gt, pred, out, spacing_mm=(2.0, 1.0, 1.0), title="case0 liver")
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert out.exists() and out.stat().st_size > 1000
    # both contour colours are drawn: pure-ish green (GT) and red (prediction) pixels
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    assert np.any((g > 150) & (r < 80) & (b < 80))
    assert np.any((r > 200) & (g < 100) & (b < 100))


def test_centre_and_missing_ground_truth():
    image, gt, pred = volume()
    assert target_centre(gt, pred) == (14, 10, 18)
    assert target_centre(None, pred) == (13, 11, 17)
    assert target_centre(np.zeros_like(gt), shape=gt.shape) == (12, 16, 14)
    rgb = overlay_slices(image, None, pred)  # inference: no ground truth
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    assert np.any((r > 200) & (g < 100) & (b < 100))
    # empty masks still render (no contour, no warning about contour levels)
    empty = np.zeros_like(gt)
    assert overlay_slices(image, empty, empty).shape == rgb.shape


def test_overlay_rejects_mismatched_shapes():
    image, gt, pred = volume()
    with pytest.raises(DataError, match="shape"):
        overlay_slices(image, gt[:-1], pred)
    with pytest.raises(DataError, match="outside"):
        overlay_slices(image, gt, pred, centre=(99, 0, 0))
