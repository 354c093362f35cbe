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


def test_radiological_panels_put_the_patients_right_on_the_high_x_side_of_the_ras_grid():
    from sammoe.eval.overlay import _RAS_VIEWS, _to_ras

    image = np.zeros((6, 5, 4), dtype=np.float32)
    image[0, 2, 1] = 1.0  # stored voxel 0 along an LPS axis: x_lps = 0 is the patient's right-most column
    lps_affine = np.diag([-1.0, -1.0, 2.0, 1.0])  # voxel -> RAS: i grows toward the patient's left
    img, _, _, centre, spacing, points = _to_ras(lps_affine, image, image > 0, None, (0, 2, 1), [(0, 2, 1)])
    assert img.shape == (6, 5, 4) and img[5, 2, 1] == 1.0  # right-most now at the high x index
    assert centre == (5, 2, 1) and tuple(points[0]) == (5.0, 2.0, 1.0) and tuple(spacing) == (1.0, 1.0, 2.0)
    # axial and coronal panels draw x as columns, flipped: high x (patient right) on the screen's left
    assert all(view[2] and view[1][1] == 0 and view[3] == ("R", "L") for view in _RAS_VIEWS[1:])


def test_clicks_are_drawn_in_their_colours():
    from sammoe.eval.overlay import CLICK_NEGATIVE, CLICK_POSITIVE

    rng = np.random.default_rng(0)
    image = rng.normal(size=(20, 20, 12)).astype(np.float32)
    pred = np.zeros_like(image, dtype=bool)
    pred[6:14, 6:14, 4:8] = True
    affine = np.diag([1.5, 1.5, 2.5, 1.0])

    def colour_pixels(rgb, hex_colour):
        target = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(rgb.astype(int) - target).sum(-1) < 30).sum())

    plain = overlay_slices(image, None, pred, affine=affine, centre=(10, 10, 6))
    clicked = overlay_slices(
        image, None, pred, affine=affine, centre=(10, 10, 6), clicks=[((10, 10, 6), True), ((8, 9, 6), False)]
    )
    assert colour_pixels(clicked, CLICK_POSITIVE) > colour_pixels(plain, CLICK_POSITIVE) + 20
    assert colour_pixels(clicked, CLICK_NEGATIVE) > colour_pixels(plain, CLICK_NEGATIVE) + 20
