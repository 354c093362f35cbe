"""Case index over nnU-Net v2, MSD and SAM-Med3D layouts; missing files and bad dataset.json."""

import json
import shutil

import nibabel as nib
import numpy as np
import pytest

from sammoe.data.datasets import ClassRef, build_index, index_dataset
from sammoe.data.phantoms import make_phantom_dataset
from sammoe.errors import DataError

SMALL = {"shape": (24, 24, 16), "spacing": (6.0, 6.0, 10.0)}


@pytest.fixture(scope="module")
def nnunet_root(tmp_path_factory):
    return make_phantom_dataset(
        tmp_path_factory.mktemp("nn") / "Dataset900_Phantom", n_cases=3, n_test=1, **SMALL
    )


def test_nnunet_index(nnunet_root):
    index = index_dataset(nnunet_root)
    assert index.datasets[0].layout == "nnunet" and index.datasets[0].modality == "CT"
    train = [c for c in index.cases if c.split == "train"]
    assert [c.case_id for c in train] == ["phantom_000", "phantom_001", "phantom_002"]
    assert train[0].image.name == "phantom_000_0000.nii.gz" and train[0].label.name == "phantom_000.nii.gz"
    test = [c for c in index.cases if c.split == "test"]
    assert len(test) == 1 and test[0].label is not None
    assert ClassRef(dataset="Dataset900_Phantom", value=5, name="spinal_cord") in index.classes()
    pairs = index.targets(classes=["liver", "Dataset900_Phantom/nodules"])
    assert len(pairs) == 6 and {r.name for _, r in pairs} == {"liver", "nodules"}
    assert len(index.targets(split="test")) == 7
    with pytest.raises(DataError, match=r"classes \['heart'\] are not in the dataset index"):
        index.targets(classes=["heart"])


def test_msd_index(nnunet_root, tmp_path):
    root = tmp_path / "Task09_Phantom"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i in range(2):
        shutil.copy(nnunet_root / f"imagesTr/phantom_00{i}_0000.nii.gz", root / f"imagesTr/ph_{i}.nii.gz")
        shutil.copy(nnunet_root / f"labelsTr/phantom_00{i}.nii.gz", root / f"labelsTr/ph_{i}.nii.gz")
    meta = {
        "name": "Phantom",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "5": "spinal_cord"},
        "numTraining": 2,
        "training": [
            {"image": f"./imagesTr/ph_{i}.nii.gz", "label": f"./labelsTr/ph_{i}.nii.gz"} for i in range(2)
        ],
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    index = index_dataset(root)
    assert index.datasets[0].layout == "msd" and index.datasets[0].labels == {"liver": 1, "spinal_cord": 5}
    assert [c.case_id for c in index.cases] == ["ph_0", "ph_1"] and index.cases[0].channel is None
    meta["training"].append({"image": "./imagesTr/ph_9.nii.gz", "label": "./labelsTr/ph_9.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="ph_9.nii.gz: training image is missing"):
        index_dataset(root)


def test_sammed3d_index(tmp_path):
    for cls in ("liver", "kidney"):
        for sub in ("imagesTr", "labelsTr"):
            folder = tmp_path / "sam" / cls / "ct_phantom" / sub
            folder.mkdir(parents=True)
            nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), folder / "c1.nii.gz")
    index = build_index([tmp_path / "sam"])
    assert index.datasets[0].layout == "sammed3d" and index.datasets[0].modality == "ct"
    assert sorted(c.case_id for c in index.cases) == ["kidney/c1", "liver/c1"]
    assert {r.name for r in index.classes()} == {"liver", "kidney"} and all(
        r.value == 1 for r in index.classes()
    )
    (tmp_path / "sam/liver/ct_phantom/imagesTr/c1.nii.gz").unlink()
    with pytest.raises(DataError, match="image for c1.nii.gz"):
        build_index(tmp_path / "sam")


def test_nnunet_missing_files_and_bad_json(nnunet_root, tmp_path):
    root = tmp_path / "Dataset901_Broken"
    shutil.copytree(nnunet_root, root)
    (root / "imagesTr/phantom_001_0000.nii.gz").unlink()
    with pytest.raises(DataError, match="phantom_001_0000.nii.gz: image for label phantom_001 is missing"):
        index_dataset(root)
    shutil.copy(nnunet_root / "imagesTr/phantom_001_0000.nii.gz", root / "imagesTr/phantom_001_0000.nii.gz")
    (root / "labelsTr/phantom_002.nii.gz").unlink()
    with pytest.raises(DataError, match="phantom_002.nii.gz: label"):
        index_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot parse JSON"):
        index_dataset(root)
    (root / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "x": 1}, "file_ending": ".nii.gz"})
    )
    with pytest.raises(DataError, match="channel_names"):
        index_dataset(root)
    with pytest.raises(DataError, match="not a dataset"):
        index_dataset(tmp_path)
    with pytest.raises(DataError, match="dataset folder not found"):
        index_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="already indexed"):
        build_index([nnunet_root, nnunet_root])
