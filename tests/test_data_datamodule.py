"""Preprocessing cache (hits, invalidation), target/case datasets, the LightningDataModule, DDP sharding."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from sammoe.data.cache import PreprocessCache
from sammoe.data.datasets import index_dataset
from sammoe.data.inverse import invert
from sammoe.data.phantoms import LABELS, make_phantom_dataset
from sammoe.data.preprocess import Preprocessor
from sammoe.errors import DataError
from sammoe.lit.crop_datasets import CaseDataset, CropSettings, TargetDataset
from sammoe.lit.datamodule import SegDataModule

SMALL = {"shape": (40, 40, 24), "spacing": (3.6, 3.6, 6.0)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_phantom_dataset(
        tmp_path_factory.mktemp("dm") / "Dataset900_Phantom", n_cases=5, n_test=1, **SMALL
    )


def test_cache_hit_and_invalidation(root, tmp_path):
    index = index_dataset(root)
    case = index.cases[0]
    pre = Preprocessor(target_spacing=4.0, crop_size=16)
    cache = PreprocessCache(tmp_path / "cache", pre)
    cold = cache.load(case)
    assert len(cache.entries()) == 1
    warm = cache.load(case)
    assert isinstance(warm.resampled.image, np.memmap)  # served from disk, not recomputed
    assert np.array_equal(np.asarray(warm.resampled.image), cold.resampled.image)
    assert np.array_equal(np.asarray(warm.resampled.label), cold.resampled.label)
    assert np.allclose(warm.resampled.affine, cold.resampled.affine)
    assert set(warm.bboxes) == set(cold.bboxes) and set(cold.bboxes) <= set(LABELS.values())
    entry = cache.entries()[0]
    assert entry["source"]["image"] and entry["params"]["target_spacing"] == [4.0, 4.0, 4.0]
    # same crop from the cold and the warm path
    a = pre.crop(cold.resampled, label_value=1)
    b = pre.crop(warm.resampled, label_value=1)
    assert torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
    # touching a file without changing it keeps the key; changing its content invalidates the entry
    key = cache.key(case)[0]
    case.label.touch()
    assert cache.key(case)[0] == key
    img = nib.load(case.label)
    data = np.asarray(img.dataobj).copy()
    data[data == LABELS["liver"]] = 0
    nib.save(nib.Nifti1Image(data, img.affine, img.header), case.label)
    assert cache.key(case)[0] != key
    changed = cache.load(case)
    assert LABELS["liver"] not in changed.bboxes and len(cache.entries()) == 2
    # other preprocessing parameters -> other entry
    PreprocessCache(tmp_path / "cache", Preprocessor(target_spacing=5.0, crop_size=16)).load(case)
    assert len(cache.entries()) == 3


def test_label_values_checked_against_dataset_json(root, tmp_path):
    index = index_dataset(root)
    case = index.cases[1]
    bad = tmp_path / "bad.nii.gz"
    img = nib.load(case.label)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(data, img.affine), bad)
    case = case.model_copy(update={"label": bad})
    ds = TargetDataset(
        [(case, case.classes[0])],
        PreprocessCache(None, Preprocessor(4.0, 16)),
        Preprocessor(4.0, 16),
        index=index,
    )
    with pytest.raises(DataError, match=r"bad.nii.gz: label values \[9\] are not declared"):
        ds[0]


def test_target_dataset_items_and_empty_class(root):
    index = index_dataset(root)
    pre = Preprocessor(4.0, 16)
    cache = PreprocessCache(None, pre)
    targets = index.targets(classes=["kidney_left"])
    item = TargetDataset(targets, cache, pre, index=index, settings=CropSettings(flips=True))[0]
    assert item["image"].shape == (1, 16, 16, 16) and item["image"].dtype == torch.float32
    assert item["label"].shape == (1, 16, 16, 16) and set(item["label"].unique().tolist()) == {0.0, 1.0}
    assert item["class_name"] == "kidney_left" and item["label_value"] == LABELS["kidney_left"]
    huge = TargetDataset(targets, cache, pre, settings=CropSettings(min_voxels=10**6, on_empty="error"))
    with pytest.raises(DataError, match="no voxels of class kidney_left"):
        huge[0]
    with pytest.raises(DataError, match="none of the"):
        TargetDataset(targets, cache, pre, settings=CropSettings(min_voxels=10**6, on_empty="skip"))[0]


def test_datamodule_batches_split_and_eval(root, tmp_path):
    dm = SegDataModule(
        roots=str(root),
        classes=["liver", "spinal_cord"],
        crop_size=16,
        spacing=4.0,
        batch_size=3,
        cache_dir=str(tmp_path / "cache"),
        val_fraction=0.4,
        seed=1,
    )
    dm.setup("fit")
    train_cases = {c.case_id for c, _ in dm.train_targets}
    val_cases = {c.case_id for c, _ in dm.val_targets}
    assert len(val_cases) == 2 and not train_cases & val_cases and len(train_cases) == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 1, 16, 16, 16) and batch["label"].shape == (3, 1, 16, 16, 16)
    assert set(batch["class_name"]) <= {"liver", "spinal_cord"} and len(batch["case_id"]) == 3
    vb = next(iter(dm.val_dataloader()))
    assert vb["image"].shape[1:] == (1, 16, 16, 16)
    items = next(iter(dm.test_dataloader()))
    assert isinstance(items, list) and len(items) == 1
    item = items[0]
    assert item["case_id"] == "phantom_005" and item["target"].shape == item["volume"].shape
    assert item["target"].dtype == bool and item["roi"].label.sum() > 0
    # the ROI maps back onto the original grid of the evaluation case
    back = invert(item["roi"], item["roi"].label)
    assert back.shape == item["target"].shape
    assert len(dm.cache.entries()) >= 3


def test_distributed_sampler_shards_targets(root):
    dm = SegDataModule(roots=[str(root)], crop_size=16, spacing=4.0, val_fraction=0.0)
    dm.setup()
    ds = dm.train_dataset()
    shards = [list(DistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    assert set(shards[0]) | set(shards[1]) == set(range(len(ds)))


def test_configurable_from_yaml(root, tmp_path):
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(SegDataModule, "data")
    cfg = parser.parse_string(
        json.dumps(
            {
                "data": {
                    "roots": [str(root)],
                    "classes": ["liver"],
                    "crop_size": 16,
                    "spacing": [4.0, 4.0, 5.0],
                    "ct_clamp": [-1000, 1000],
                }
            }
        )
    )
    dm = parser.instantiate_classes(cfg).data
    assert isinstance(dm, SegDataModule) and dm.preprocessor.target_spacing == (4.0, 4.0, 5.0)
    assert dm.hparams.crop_size == 16


def test_case_dataset_without_crop(root):
    index = index_dataset(root)
    pre = Preprocessor(4.0, 16)
    item = CaseDataset(index.targets(classes=["spleen"])[:1], PreprocessCache(None, pre), pre, crop=False)[0]
    assert item["roi"] is None and item["target"].any()


def test_lightning_fit_and_test_loop(root, tmp_path):
    import lightning as L

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []

        def training_step(self, batch, _):
            assert batch["image"].shape[1:] == (1, 16, 16, 16)
            return ((batch["image"].mean() * self.w) ** 2).sum() + self.w.sum() * 0

        def test_step(self, items, _):
            self.seen.extend(item["case_id"] for item in items)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = SegDataModule(
        roots=str(root),
        classes=["liver"],
        crop_size=16,
        spacing=4.0,
        batch_size=2,
        num_workers=1,
        cache_dir=str(tmp_path / "c"),
    )
    probe = Probe()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(probe, datamodule=dm)
    trainer.test(probe, datamodule=dm, verbose=False)
    assert probe.seen == ["phantom_005"]


@pytest.mark.parametrize("kwargs", [{"crop_size": 63}, {"crop_size": 0}, {"batch_size": -1}, {"jitter": -2}])
def test_bad_data_settings_are_one_config_error(tmp_path, kwargs):
    from sammoe.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        SegDataModule(roots=str(tmp_path), **kwargs)
    assert "\n" not in str(err.value) and str(next(iter(kwargs.values()))) in str(err.value)
