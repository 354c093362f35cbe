"""What a segmentation gives back and writes: the crop's footprint is the only part of the input grid a click
touches, the label map and visible voxels agree with whole-grid arithmetic, and Segmentation.save writes the
formats the CLI writes."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from sammoe.data.clicks_file import read_clicks_file
from sammoe.data.inverse import invert_probability
from sammoe.data.io import Volume, read_label
from sammoe.errors import ConfigError, DataError
from sammoe.inference.predictor import Predictor
from sammoe.inference.targets import Target
from sammoe.model.sam3d import SamMed3D


def _ct_like(slices: int) -> Volume:
    """A thick-slice volume much larger than one crop along z, so the footprint is a small box of it."""
    rng = np.random.default_rng(0)
    array = rng.normal(0.0, 10.0, size=(96, 96, slices)).astype(np.float32)
    array[30:60, 30:60, slices // 2 - 3 : slices // 2 + 3] += 300.0
    affine = np.diag([0.7, 0.7, 5.0, 1.0])
    return Volume(array=array, affine=affine)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(SamMed3D.from_preset("tiny").eval(), "cpu", use_sliding_window=False)


@pytest.mark.parametrize("slices", [40, 200])
def test_a_refinement_touches_only_the_crop_footprint_and_matches_the_whole_grid_path(predictor, slices):
    volume = _ct_like(slices)
    predictor.set_image(volume)
    click = [45, 45, slices // 2]
    predictor.predict([Target([click]), Target([[40, 40, slices // 2]])], probabilities=True)
    result = predictor.add_click(0, [50, 50, slices // 2], positive=True)
    state = predictor._states[0]
    crop = predictor._decoding.upsample(state.low)[0]  # the crop's probabilities (no state keeps them)
    whole = invert_probability(state.entry.roi, crop) > 0.5
    assert np.array_equal(result.mask, whole)  # the same mask as mapping onto the whole grid
    assert result.box is not None and result.box[2].stop - result.box[2].start < slices
    outside = np.ones(volume.shape, bool)
    outside[result.box] = False
    assert not result.mask[outside].any()
    # visible voxels and the label map computed in the box equal whole-grid arithmetic
    later = predictor._states[1].result
    assert result.voxels == int(np.count_nonzero(result.mask & ~later.mask))
    labels = predictor.segmentation.labels
    expected = np.zeros(volume.shape, np.uint8)
    expected[result.mask] = 1
    expected[later.mask] = 2
    assert np.array_equal(labels, expected)


def test_segmentation_save_writes_the_cli_formats_and_never_the_input(tmp_path, predictor):
    image = tmp_path / "ct.nii.gz"
    volume = _ct_like(30)
    nib.save(nib.Nifti1Image(volume.array, volume.affine), image)
    predictor.set_image(image)
    seg = predictor.predict([Target([[45, 45, 15]], name="blob")])
    written = seg.save(tmp_path / "seg.nii.gz")
    back = read_label(written)
    assert np.array_equal(back.array, seg.labels) and np.allclose(back.affine, volume.affine)
    assert seg.save(tmp_path / "seg.seg.nrrd").is_file()
    with pytest.raises(DataError, match="would replace"):
        seg.save(image)
    with pytest.raises(DataError, match="exists"):
        seg.save(tmp_path / "seg.nii.gz")
    seg.save(tmp_path / "seg.nii.gz", overwrite=True)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"spcae": "ras", "targets": [{"points": [[1, 2, 3]]}]}, "unknown top-level key"),
        ({"targets": [{"points": [["1", 2, 3]]}]}, "three numbers"),
        ({"targets": [{"points": [[True, 2, 3]]}]}, "three numbers"),
        ({"targets": [{"points": [[1, 2]]}]}, "three numbers"),
        ({"targets": [{"points": [[1, 2, 3]], "labels": ["1"]}]}, "'labels'"),
        ({"targets": [{"points": [[1, 2, 3]], "colour": 1}]}, "unknown keys"),
        ({"space": "mm", "targets": [{"points": [[1, 2, 3]]}]}, "unknown coordinate system"),
        ({"targets": [{"points": [[1, 2, 3]], "route": 3}]}, "'route' names one decoder"),
        ({"targets": [{"points": [[1, 2, 3]], "route": " "}]}, "'route' names one decoder"),
        ({"targets": [{"points": [[1, 2, 3]], "rotue": "liver"}]}, "use name, points, labels, route"),
    ],
)
def test_clicks_file_mistakes_are_refused_with_one_line(tmp_path, document, message):
    path = tmp_path / "clicks.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=message) as info:
        read_clicks_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_clicks_file_keeps_what_napari_saves(tmp_path):
    path = tmp_path / "clicks.json"
    document = {
        "space": "voxel",
        "image": "ct.nii.gz",
        "model": {"name": "demo"},
        "results": [],
        "targets": [{"name": "liver", "points": [[1, 2, 3], [2, 2, 3]], "labels": [1, 0]}],
    }
    path.write_text(json.dumps(document))
    (target,) = read_clicks_file(path)
    assert (target.name, target.points, target.labels, target.space) == (
        "liver",
        [[1, 2, 3], [2, 2, 3]],
        [1, 0],
        "voxel",
    )


def test_a_clicks_file_target_may_name_its_decoder(tmp_path):
    path = tmp_path / "clicks.json"
    targets = [{"name": "cord", "points": [[1, 2, 3]], "route": "spinal_cord"}, {"points": [[4, 5, 6]]}]
    path.write_text(json.dumps({"targets": targets}))
    cord, other = read_clicks_file(path)
    assert cord.route == "spinal_cord" and other.route is None
