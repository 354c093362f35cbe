"""Preprocessing and its exact inverse: official-crop parity, round trips on LPS/LAS/oblique/anisotropic
affines and on real data (colin27), click mapping, sliding window."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from sammoe.data.inverse import invert, invert_probability
from sammoe.data.io import Volume, read_image, read_label, write_label
from sammoe.data.preprocess import (
    Preprocessor,
    Resampled,
    Roi,
    bbox,
    official_crop_start,
    znormalize,
)
from sammoe.errors import DataError
from sammoe.interact.sliding_window import sliding_window


def rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = np.cos(ax), np.sin(ax), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def make_affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(direction, dtype=float) * np.asarray(spacing, dtype=float)[None, :]
    affine[:3, 3] = origin
    return affine


def world_grid(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3)
    return (idx @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)


def ellipsoid_case(shape, affine, radii=(25.0, 18.0, 30.0), centre_offset=(5.0, -4.0, 3.0), ball_radius=14.0):
    """Image + label with an ellipsoid (value 2) and a smaller ball (value 1), defined in world mm."""
    xyz = world_grid(shape, affine)
    centre = affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3] + np.asarray(centre_offset)
    d = xyz - centre
    ell = ((d / np.asarray(radii)) ** 2).sum(-1) <= 1
    ball = ((d / ball_radius) ** 2).sum(-1) <= 1
    label = np.zeros(shape, np.uint8)
    label[ell] = 2
    label[ball] = 1
    rng = np.random.default_rng(0)
    image = (50 + 100 * ell + 50 * ball + rng.normal(0, 5, shape)).astype(np.float32)
    return image, label


def dice(a, b):
    a, b = np.asarray(a).astype(bool), np.asarray(b).astype(bool)
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


GEOMETRIES = {
    "RAS_iso": (np.eye(3), (1.0, 1.0, 1.0), (60, 56, 64)),
    "LPS": (np.diag([-1.0, -1.0, 1.0]), (0.9, 0.9, 1.2), (64, 64, 56)),
    "LAS": (np.diag([-1.0, 1.0, 1.0]), (1.1, 0.8, 1.0), (56, 72, 64)),
    "oblique": (rotation(0.3, 0.5), (1.0, 1.2, 1.4), (64, 56, 48)),
    "aniso_0.7x0.7x5": (np.diag([-1.0, -1.0, 1.0]) @ rotation(0.0, 0.2), (0.7, 0.7, 5.0), (100, 100, 16)),
    "permuted": (np.array([[0, 0, 1.0], [1.0, 0, 0], [0, -1.0, 0]]), (1.0, 1.3, 0.9), (60, 48, 66)),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_round_trip_geometry(name, tmp_path):
    direction, spacing, shape = GEOMETRIES[name]
    affine = make_affine(direction, spacing, (-30.0, 20.0, -15.0))
    image, label = ellipsoid_case(shape, affine)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    img = read_image(tmp_path / "img.nii.gz")
    lab = read_label(tmp_path / "lab.nii.gz", like=img)
    pre = Preprocessor(target_spacing=1.5, crop_size=64)
    res = pre.resample(img, lab)
    assert nib.aff2axcodes(res.affine) == ("R", "A", "S")
    for value in (1, 2):
        roi = pre.crop(res, label_value=value)
        assert roi.image.shape == (1, 64, 64, 64) and roi.image.dtype == torch.float32
        back = invert(roi, roi.label)
        assert back.shape == img.shape and back.dtype == np.uint8
        assert dice(back, lab.array == value) >= 0.95, (name, value, dice(back, lab.array == value))
    out = write_label(tmp_path / "pred.nii.gz", back, img)
    again = nib.load(out)
    assert np.array_equal(again.affine, img.affine) and again.shape == img.shape
    assert again.get_data_dtype() == np.uint8


def test_crop_matches_official_torchio_pipeline():
    """Same grid, same ROI, same label as tio Resample -> ToCanonical -> CropOrPad(mask) (official path)."""
    tio = pytest.importorskip("torchio")
    affine = make_affine(np.diag([-1.0, -1.0, 1.0]), (0.8, 0.8, 2.0), (10.0, -5.0, 3.0))
    image, label = ellipsoid_case(
        (70, 66, 30), affine, radii=(12, 9, 14), centre_offset=(7, 3, -5), ball_radius=5.0
    )
    pre = Preprocessor(target_spacing=1.5, crop_size=32)
    res = pre.resample(Volume(image, affine), label)
    for value in (1, 2):
        roi = pre.crop(res, label_value=value)
        subject = tio.Subject(
            image=tio.ScalarImage(tensor=torch.from_numpy(image)[None], affine=affine),
            label=tio.LabelMap(
                tensor=torch.from_numpy((label == value).astype(np.int16))[None], affine=affine
            ),
        )
        transform = tio.Compose(
            [
                tio.Resample(1.5),
                tio.ToCanonical(),
                tio.CropOrPad(mask_name="label", target_shape=(32, 32, 32)),
                tio.ZNormalization(masking_method=lambda x: x > 0),
            ]
        )
        out = transform(subject)
        assert np.allclose(out["image"].affine, roi.affine)
        assert torch.equal(out["label"].data.bool(), roi.label)
        assert torch.allclose(out["image"].data.float(), roi.image, atol=1e-4)


def test_official_crop_start_half_voxel_rule():
    # centre on an index: [c - S/2, c + S/2)
    assert official_crop_start([10, 10, 10], [20, 20, 20], [8, 8, 8]).tolist() == [11, 11, 11]
    # centre on a half voxel (min+max_excl odd): shifted by -0.5
    assert official_crop_start([10, 10, 10], [21, 21, 21], [8, 8, 8]).tolist() == [11, 11, 11]
    assert bbox(np.zeros((3, 3, 3), bool)) is None


def test_click_centred_crop_and_click_mapping():
    affine = make_affine(rotation(0.2, -0.4), (0.9, 1.1, 2.0), (3.0, 4.0, 5.0))
    image, label = ellipsoid_case((60, 50, 30), affine)
    volume = Volume(image, affine)
    pre = Preprocessor(target_spacing=1.5, crop_size=32)
    click = np.array([31.0, 22.0, 14.0])
    roi = pre(volume, label, center_vox=click)
    inside = roi.input_to_roi(click)
    assert np.all(np.abs(inside - 16) <= 0.5 + 1e-6)  # the click sits at the ROI centre voxel
    assert np.allclose(roi.roi_to_input(inside), click)
    world = affine[:3, :3] @ click + affine[:3, 3]
    roi_mm = pre(volume, center_mm=world)
    assert np.array_equal(roi_mm.start, roi.start)
    assert np.allclose(roi.world_to_roi(world), inside)
    assert roi.contains(inside).all() and not roi.contains([[-3.0, 0, 0]]).any()
    assert roi_mm.label is None  # no ground truth needed for a click-centred crop


def test_znormalize_and_ct_clamp():
    x = torch.zeros(1, 4, 4, 4)
    x[0, :2] = torch.arange(32, dtype=torch.float32).reshape(2, 4, 4) + 1
    z = znormalize(x)
    fg = z[x > 0]
    assert abs(float(fg.mean())) < 1e-5 and abs(float(fg.std()) - 1) < 1e-5
    assert torch.isfinite(znormalize(torch.zeros(2, 2, 2))).all()
    res = Resampled(
        image=np.full((8, 8, 8), 3000.0, np.float32),
        affine=np.eye(4),
        orig_affine=np.eye(4),
        orig_shape=(8, 8, 8),
    )
    res.image[:4] = -2000
    roi = Preprocessor(1.0, 8, ct_clamp=(-1000, 1000)).crop(res, start=(0, 0, 0))
    assert torch.isfinite(roi.image).all()


def test_empty_class_raises():
    pre = Preprocessor(1.5, 16)
    image, label = ellipsoid_case((30, 30, 30), np.eye(4), radii=(5, 5, 5), ball_radius=3.0)
    with pytest.raises(DataError, match="no voxels of class 9"):
        pre(Volume(image, np.eye(4), Path("x.nii.gz")), label, label_value=9)
    shifted = np.eye(4)
    shifted[2, 3] = 3.0
    with pytest.raises(DataError, match="y.nii.gz: affine differs"):
        pre(Volume(image, np.eye(4), Path("x.nii.gz")), Volume(label, shifted, Path("y.nii.gz")))


@pytest.mark.shared_data
def test_colin27_round_trip(shared_dir):
    colin = shared_dir / "data" / "colin27"
    img = read_image(colin / "ch2.nii.gz")
    lab = read_label(colin / "aal.nii.gz", like=img)
    # At 1 mm (the file's own grid, already RAS) the round trip is exact for every structure.
    exact = Preprocessor(target_spacing=1.0, crop_size=64)
    res1 = exact.resample(img, lab)
    for value in (37, 77):
        roi = exact.crop(res1, label_value=value)
        assert np.array_equal(invert(roi, roi.label), lab.array == value)
    # At 1.5 mm (official) nearest resampling costs about one voxel at the boundary: thin atlas regions come
    # back at Dice ~0.92-0.94, large structures (whole brain, one hemisphere, cerebellum) at >= 0.95.
    pre = Preprocessor()
    res = pre.resample(img, lab)
    groups = {
        "brain": lambda a: a > 0,
        "left": lambda a: a % 2 == 1,
        "cerebellum": lambda a: (a >= 91) & (a <= 108),
    }
    for name, select in groups.items():
        grouped = Resampled(
            res.image, res.affine, res.orig_affine, res.orig_shape, select(res.label).astype(np.uint8)
        )
        roi = pre.crop(grouped, label_value=1)
        assert dice(invert(roi, roi.label), select(lab.array)) >= 0.95, name
    for value in (37, 41, 73, 77):
        roi = pre.crop(res, label_value=value)
        assert roi.image.shape == (1, 128, 128, 128)
        assert dice(invert(roi, roi.label), lab.array == value) >= 0.9


def test_sliding_window_large_structure():
    affine = make_affine(np.diag([-1.0, -1.0, 1.0]), (2.0, 2.0, 3.0), (0.0, 0.0, 0.0))
    shape = (80, 70, 40)
    image, label = ellipsoid_case(shape, affine, radii=(60.0, 45.0, 45.0), centre_offset=(0, 0, 0))
    target = label > 0
    pre = Preprocessor(target_spacing=3.0, crop_size=16)  # a 48 mm window, the structure is 120 mm long
    volume = Volume(image, affine)
    click = np.argwhere(target).mean(0).round()
    calls = []

    def oracle(roi):
        calls.append(roi.meta["window"])
        return roi.label.float()[0]

    single = sliding_window(pre, volume, click, oracle, label=target.astype(np.uint8), max_windows=1)
    full = sliding_window(pre, volume, click, oracle, label=target.astype(np.uint8))
    assert full.shape == shape
    assert dice(single, target) < 0.8
    assert dice(full, target) >= 0.95
    assert len(calls) > 2


def test_windows_box_maps_exactly_as_the_whole_grid():
    """A refinement maps only the visited windows' box (plus one voxel of zeros) back to the input grid; that
    must equal mapping the whole resampled grid, value for value, also where the box cuts the target."""
    from scipy import ndimage

    from sammoe.data.inverse import linear_in_box
    from sammoe.interact.sliding_window import grow_windows

    affine = make_affine(np.diag([-1.0, -1.0, 1.0]), (0.7, 0.7, 5.0), (0.0, 0.0, 0.0))
    shape = (160, 140, 20)  # CT-like: fine in plane, thick slices (the input grid is finer than the model's)
    image, label = ellipsoid_case(shape, affine, radii=(50.0, 40.0, 40.0), centre_offset=(0, 0, 0))
    pre = Preprocessor(target_spacing=3.0, crop_size=16)
    volume = Volume(image, affine)
    click = np.argwhere(label > 0).mean(0).round()
    soft = lambda roi: ndimage.gaussian_filter(roi.label.float()[0].numpy(), 1.0)  # noqa: E731

    for windows in (1, 3, 27):  # 1 and 3: the box's faces cut through the target
        blended, box = grow_windows(pre, volume, click, soft, label=label, max_windows=windows)
        res = pre.resample(volume, label)
        whole_grid = np.zeros(res.shape, np.float32)
        whole_grid[tuple(slice(a, a + n) for a, n in zip(box.start, box.size))] = blended
        whole = Roi(torch.empty(0), np.zeros(3, np.int64), res.shape, res.affine, res.shape, affine, shape)
        expected = invert_probability(whole, whole_grid)
        footprint, values = linear_in_box(box, blended)
        got = np.zeros(shape, np.float32)
        got[footprint.slices] = values
        assert np.array_equal(got > 0.5, expected > 0.5), windows
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert expected.sum() > 0 and (windows == 27 or footprint.shape != shape)  # a box where it can be


def grid_case(field, crop=16):
    """A 1 mm RAS grid (input voxels == grid voxels) and a fake ``predict`` that returns ``field`` under each
    window (0 outside the volume) and records the window offsets it was asked for."""
    affine = np.eye(4)
    res = Resampled(np.ones(field.shape, np.float32), affine, affine, field.shape)
    calls = []

    def predict(roi):
        calls.append(roi.meta["window"])
        out = np.zeros(roi.size, np.float32)
        lo = np.maximum(roi.start, 0)
        hi = np.minimum(roi.start + np.asarray(roi.size), field.shape)
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        out[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, roi.start))] = field[src]
        return out

    return Preprocessor(target_spacing=1.0, crop_size=crop), res, predict, calls


def test_sliding_window_ignores_blobs_not_connected_to_the_target():
    # crop 16, step 8: the click window covers [24, 40) on every axis; its neighbours shift by 8.
    shape, click = (64, 64, 64), (32, 32, 32)
    target = np.zeros(shape, np.float32)
    target[20:44, 30:35, 30:35] = 1  # a rod through the click, crossing both axis-0 faces of the click window
    blob = np.zeros(shape, np.float32)
    blob[28:34, 36:64, 30:34] = 1  # one voxel away from the rod, crossing the +axis-1 face, up to the edge

    pre, res, predict, alone = grid_case(target)
    sliding_window(pre, res, click, predict)
    assert sorted(alone) == [(-1, 0, 0), (0, 0, 0), (1, 0, 0)]

    pre, res, predict, calls = grid_case(np.maximum(target, blob))
    mask = sliding_window(pre, res, click, predict)
    assert calls == alone  # the blob adds no window: 3, where growing on any foreground visited 12
    assert not any(offset[1] for offset in calls)
    assert mask.shape == shape
    assert mask[target > 0].all()
    # the blob is not cut out of the windows that were predicted, it just does not pull in new ones
    assert mask[28:34, 36:40, 30:34].all() and not mask[:, 40:].any()

    # a click beside the rod (background) follows the nearest component, the rod, not the blob
    calls.clear()
    sliding_window(pre, res, (32, 28, 32), predict)
    assert sorted(calls) == [(-1, 0, 0), (0, 0, 0), (1, 0, 0)]


def test_sliding_window_follows_a_large_connected_target():
    shape, click = (64, 64, 64), (20, 20, 32)
    target = np.zeros(shape, np.float32)
    target[16:60, 17:24, 28:36] = 1  # an L: along axis 0 from the click ...
    target[52:60, 17:62, 28:36] = 1  # ... then along axis 1, far outside the click window
    pre, res, predict, calls = grid_case(target)
    mask = sliding_window(pre, res, click, predict, max_windows=100)
    assert np.array_equal(mask.astype(bool), target > 0)
    assert len(calls) == len(set(calls)) > 6
    assert any(offset[1] >= 3 for offset in calls)  # the growth turned the corner
    for cap in (1, 4):  # max_windows stays a hard cap
        calls.clear()
        sliding_window(pre, res, click, predict, max_windows=cap)
        assert len(calls) == cap


def test_flip_axes_flip_image_and_label_together():
    affine = make_affine(np.eye(3), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    image, label = ellipsoid_case(
        (40, 36, 30), affine, radii=(15, 10, 12), centre_offset=(6, -3, 2), ball_radius=5
    )
    pre = Preprocessor(2.0, 24)
    res = pre.resample(Volume(image, affine), label)
    plain = pre.crop(res, label_value=2)
    flipped = pre.crop(res, label_value=2, flip_axes=(0, 2))
    assert torch.allclose(flipped.image, plain.image.flip([1, 3]))
    assert torch.equal(flipped.label, plain.label.flip([1, 3]))
    assert flipped.meta["flipped"] == (0, 2)


def test_linear_probabilities_put_edges_closer_to_the_truth_than_nearest_masks():
    """A sphere's probability on a 1.5 mm ROI, mapped onto a 0.5 mm input grid: thresholding after linear
    interpolation follows the true surface better than mapping the thresholded mask (nearest)."""
    import torch

    from sammoe.data.preprocess import Roi

    size, fine = 24, 72
    roi_affine = np.diag([1.5, 1.5, 1.5, 1.0])
    orig_affine = np.diag([0.5, 0.5, 0.5, 1.0])
    orig_affine[:3, 3] = -0.5  # fine voxel centres sit between coarse ones
    roi = Roi(
        image=torch.empty(0),
        start=np.zeros(3, dtype=np.int64),
        size=(size,) * 3,
        ras_affine=roi_affine,
        ras_shape=(size,) * 3,
        orig_affine=orig_affine,
        orig_shape=(fine,) * 3,
    )
    centre, radius = np.array([17.3, 18.1, 16.7]), 9.2  # mm
    coarse = np.stack(np.meshgrid(*[np.arange(size) * 1.5] * 3, indexing="ij"), -1)
    prob = 1 / (1 + np.exp((np.linalg.norm(coarse - centre, axis=-1) - radius) / 1.0))
    fine_mm = np.stack(np.meshgrid(*[np.arange(fine) * 0.5 - 0.5] * 3, indexing="ij"), -1)
    truth = np.linalg.norm(fine_mm - centre, axis=-1) <= radius

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    nearest = invert(roi, prob > 0.5).astype(bool)
    linear = invert_probability(roi, prob) > 0.5
    assert dice(linear, truth) > dice(nearest, truth) + 0.01
