"""Phantom generator: determinism, every class present, nnU-Net layout, class subsets, refusal to
overwrite."""

import json

import nibabel as nib
import numpy as np
import pytest

from sammoe.data.phantoms import (
    GENERAL_CLASSES,
    LABELS,
    TASK_CLASSES,
    make_phantom_case,
    make_phantom_dataset,
)
from sammoe.errors import DataError

SMALL = {"shape": (48, 48, 32), "spacing": (3.0, 3.0, 5.0)}


def test_label_constants_are_stable():
    assert LABELS == {
        "background": 0,
        "liver": 1,
        "kidney_left": 2,
        "kidney_right": 3,
        "spleen": 4,
        "spinal_cord": 5,
        "nodules": 6,
        "textured_lesion": 7,
    }
    assert set(GENERAL_CLASSES) | set(TASK_CLASSES) == set(LABELS) - {"background"}
    assert not set(GENERAL_CLASSES) & set(TASK_CLASSES)


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_case_deterministic_and_complete(modality):
    a = make_phantom_case(3, modality=modality, **SMALL)
    b = make_phantom_case(3, modality=modality, **SMALL)
    c = make_phantom_case(4, modality=modality, **SMALL)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    image, label, affine = a
    assert image.dtype == np.float32 and label.dtype == np.uint8 and np.isfinite(image).all()
    assert set(np.unique(label)) == set(LABELS.values())
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), SMALL["spacing"])
    # the textured lesion has the liver's mean intensity but a much larger spread
    liver, lesion = image[label == LABELS["liver"]], image[label == LABELS["textured_lesion"]]
    assert abs(lesion.mean() - liver.mean()) < 0.5 * lesion.std()
    assert lesion.std() > 2 * liver.std()


def test_lps_case_is_same_anatomy_in_world_space():
    img_ras, lab_ras, aff_ras = make_phantom_case(1, **SMALL)
    img_lps, lab_lps, aff_lps = make_phantom_case(1, lps=True, **SMALL)
    assert nib.aff2axcodes(aff_lps) == ("L", "P", "S")
    assert np.array_equal(lab_lps[::-1, ::-1], lab_ras)
    ijk = np.array([5, 7, 3, 1.0])
    assert np.allclose(aff_ras @ ijk, aff_lps @ np.array([47 - 5, 47 - 7, 3, 1.0]))


def test_dataset_layout_and_determinism(tmp_path):
    root = make_phantom_dataset(tmp_path / "A", n_cases=3, seed=5, n_test=1, **SMALL)
    again = make_phantom_dataset(tmp_path / "B", n_cases=3, seed=5, n_test=1, **SMALL)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == LABELS and meta["numTraining"] == 3 and meta["file_ending"] == ".nii.gz"
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["sammoe"]["general"] == list(GENERAL_CLASSES) and meta["sammoe"]["task"] == list(TASK_CLASSES)
    names = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert names == ["phantom_000_0000.nii.gz", "phantom_001_0000.nii.gz", "phantom_002_0000.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == ["phantom_003.nii.gz"]
    for sub in ("imagesTr/phantom_001_0000.nii.gz", "labelsTr/phantom_001.nii.gz"):
        x, y = nib.load(root / sub), nib.load(again / sub)
        assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)) and np.array_equal(
            x.affine, y.affine
        )
    assert nib.aff2axcodes(nib.load(root / "imagesTr/phantom_001_0000.nii.gz").affine) == ("L", "P", "S")
    with pytest.raises(DataError, match="already exists"):
        make_phantom_dataset(root, n_cases=1, **SMALL)


def test_class_subset_is_renumbered(tmp_path):
    root = make_phantom_dataset(tmp_path / "T", n_cases=1, classes=["spinal_cord", "nodules"], **SMALL)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "spinal_cord": 1, "nodules": 2}
    assert meta["sammoe"]["general"] == [] and meta["sammoe"]["task"] == ["spinal_cord", "nodules"]
    label = np.asarray(nib.load(root / "labelsTr/phantom_000.nii.gz").dataobj)
    assert set(np.unique(label)) == {0, 1, 2}
    with pytest.raises(DataError, match="do not exist"):
        make_phantom_dataset(tmp_path / "U", n_cases=1, classes=["heart"], **SMALL)
