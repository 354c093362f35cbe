"""The one ROI policy: training crops, evaluation crops and the Predictor's crop all centre on the first click
through `sammoe.interact.roi`; the ground-truth crop only in `crop: bbox`."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sammoe.data.clicks import next_click_from_error
from sammoe.data.clicks_file import round_voxel
from sammoe.data.preprocess import Preprocessor, official_crop_start
from sammoe.errors import ConfigError
from sammoe.eval.calibration import BACKGROUND
from sammoe.inference.predictor import Predictor, Target
from sammoe.interact.roi import click_centred_start, draw_click, seeded_first_click
from sammoe.interact.rollout import StepOutput, evaluation_rollout
from sammoe.lit.phantom_data import PhantomDataModule
from sammoe.loading import load_backbone


@pytest.fixture(scope="module")
def phantom_datamodule(tmp_path_factory):
    root = tmp_path_factory.mktemp("roi")
    dm = PhantomDataModule(
        root=str(root / "ds"),
        cache_dir=str(root / "cache"),
        n_cases=4,
        n_test=2,
        crop_size=64,
        classes=["liver", "kidney_left", "spinal_cord"],
        background_clicks=2,
    )
    dm.setup("fit")
    return dm


def test_training_crop_is_centred_on_a_click_inside_the_target(phantom_datamodule):
    ds = phantom_datamodule.train_dataset()
    ds.settings = replace(ds.settings, flips=False)
    seen_starts = set()
    for i in range(len(ds)):
        item = ds[i]
        click = item["first_click"].long()
        if item["class_name"] == BACKGROUND:
            assert not item["label"].any()  # a click on unlabelled voxels: nothing to segment
            continue
        assert item["label"][0][tuple(click)]  # the click lies on the target
        # the crop is placed by the click alone: its centre is the click
        assert click.tolist() == [32, 32, 32]
        seen_starts.add(tuple(item["start"].tolist()))
    assert len(seen_starts) > 1


def test_training_crop_never_uses_the_bounding_box(phantom_datamodule):
    """Two draws of the same target give two different crops (the click moves, the box does not), and none of
    them is the official box crop but by chance."""
    ds = phantom_datamodule.train_dataset()
    ds.settings = replace(ds.settings, flips=False)
    liver = next(i for i, (_, ref) in enumerate(ds.targets) if ref.name == "liver")
    starts = {tuple(ds[liver]["start"].tolist()) for _ in range(6)}
    case, ref = ds.targets[liver]
    lo, hi, _ = ds.cache.load(case).bboxes[ref.value]
    official = tuple(official_crop_start(lo, hi, (64, 64, 64)).tolist())
    assert len(starts) > 1
    assert official not in starts


def test_jitter_bounds_and_flipped_click(phantom_datamodule):
    ds = phantom_datamodule.train_dataset()
    ds.settings = replace(ds.settings, jitter=4)
    for i in range(len(ds)):
        item = ds[i]
        if item["class_name"] == BACKGROUND:
            continue
        click = item["first_click"].long()
        assert item["label"][0][tuple(click)]  # also after random flips
        assert (click - 32).abs().max() <= 4 + 1


def test_validation_clicks_are_fixed_and_bbox_mode_has_none(phantom_datamodule):
    """Every epoch (and every dataloader worker, which holds its own copy of the dataset) validates on the
    same clicks: a second dataset draws the same ones, and each lies on its target at the crop's centre."""
    val, again = phantom_datamodule.val_dataset(), phantom_datamodule.val_dataset()
    items = [val[i] for i in range(len(val))]
    assert [item["first_click"].tolist() for item in items] == [
        again[i]["first_click"].tolist() for i in range(len(again))
    ]
    targets = [item for item in items if item["class_name"] != BACKGROUND]
    assert targets
    for item in targets:
        click = item["first_click"].long()
        assert item["label"][0][tuple(click)] and click.tolist() == [32, 32, 32]
    val.settings = replace(val.settings, crop="bbox")
    item = next(val[i] for i in range(len(val)) if val.targets[i][1].name != BACKGROUND)
    assert "first_click" not in item


def test_eval_crop_is_the_predictors_crop_for_the_protocols_first_click(phantom_datamodule):
    phantom_datamodule.setup("test")
    items = phantom_datamodule.eval_dataset()
    j = next(i for i, (_, ref) in enumerate(items.targets) if ref.name == "liver")
    item = items[j]
    target = item["target"]
    # the official protocol's first click (uniform over the target, generator seeded 233) on the original grid
    gt = torch.from_numpy(target)[None]
    coords, _ = next_click_from_error(torch.zeros_like(gt), gt, torch.Generator().manual_seed(233))
    assert item["first_click_input"].tolist() == coords[0, 0].long().tolist()
    assert target[tuple(item["first_click_input"])]
    pred = Predictor(load_backbone(None, "tiny"), "cpu", target_spacing=1.5, use_sliding_window=False)
    pred.set_image(item["volume"])
    pred.predict(Target([item["first_click_input"].tolist()]))
    roi = pred._states[0].entry.roi
    cached = phantom_datamodule.cache.load(items.targets[j][0]).resampled
    start = click_centred_start(phantom_datamodule.preprocessor, cached, item["first_click_input"])
    assert roi.start.tolist() == start.tolist()  # the cached grid and the Predictor's resampling agree
    assert roi.start.tolist() == click_centred_start(pred.pre, pred._res, item["first_click_input"]).tolist()
    crop = phantom_datamodule.preprocessor.crop(cached, start=start, label_value=item["label_value"])
    click = round_voxel(crop.input_to_roi(item["first_click_input"].astype(float)))
    assert crop.label[0][tuple(click)]  # the centring click lies on the target in the crop too
    assert item["roi"] is not None  # the official crop rides along for the comparison table


def test_background_test_targets_click_unlabelled_voxels_with_distinct_seeds(phantom_datamodule):
    phantom_datamodule.setup("test")
    items = phantom_datamodule.eval_dataset()
    background = [items[i] for i in range(len(items)) if items[i]["class_name"] == BACKGROUND]
    assert len(background) == 2 * 2  # two per test case
    for item in background:
        assert item["target"][tuple(item["first_click_input"])]  # an unlabelled voxel
        assert item["roi"] is None
    same_case = [
        b["first_click_input"].tolist() for b in background if b["case_id"] == background[0]["case_id"]
    ]
    assert len(same_case) == 2 and same_case[0] != same_case[1]


def test_draw_click_and_seeded_first_click():
    mask = np.zeros((5, 6, 7), bool)
    assert draw_click(mask, np.random.default_rng(0)) is None
    assert seeded_first_click(mask, 233) is None
    mask[1, 2, 3] = mask[4, 5, 6] = True
    for seed in range(5):
        assert mask[tuple(draw_click(mask, np.random.default_rng(seed)))]
    # the seed decides which target voxel is clicked; every one of them can be
    assert {tuple(seeded_first_click(mask, seed).tolist()) for seed in range(20)} == {(1, 2, 3), (4, 5, 6)}
    # and it is the first click the evaluation protocol itself draws with that seed
    cube = np.zeros((8, 8, 8), bool)
    cube[1, 2, 3] = cube[4, 5, 6] = cube[7, 0, 2] = True
    gt = torch.from_numpy(cube)[None, None].float()
    rollout = evaluation_rollout(
        lambda *args: StepOutput(torch.zeros(1, 1, 2, 2, 2)), torch.zeros(1), gt, click_counts=(1,), seed=233
    )
    first = seeded_first_click(cube, 233)
    assert cube[tuple(first)] and rollout.clicks[0][0, 0].tolist() == first.tolist()


def test_predictor_and_preprocessor_agree_on_click_centre():
    pre = Preprocessor(1.5, 64)
    from sammoe.data.io import Volume

    array = np.random.default_rng(0).normal(size=(50, 40, 30)).astype(np.float32)
    vol = Volume(array=array, affine=np.diag([2.0, 1.0, 3.0, 1.0]))
    res = pre.resample(vol)
    start = click_centred_start(pre, res, [20, 10, 5])
    exact = res.input_to_ras(np.array([20.0, 10.0, 5.0]))  # on a half voxel along axis 0: rounds up
    assert np.all(np.abs(start + 32 - exact) <= 0.5 + 1e-9)
    assert (start + 32).tolist() == np.floor(exact + 0.5 + 1e-6).astype(int).tolist()


def test_border_clicks_land_on_the_host_organ_beside_the_task_target(tmp_path):
    """Router training's hard negatives: liver voxels within border_mm of the lesion, only in training."""
    from sammoe.data.phantoms import LABELS
    from sammoe.lit.crop_datasets import BORDER

    dm = PhantomDataModule(
        root=str(tmp_path / "ds"),
        cache_dir=str(tmp_path / "cache"),
        n_cases=3,
        n_test=0,
        crop_size=64,
        val_fraction=0.34,
        classes=["textured_lesion"],
        general_classes=["liver", "spleen"],
        border_clicks=4,
        border_mm=4.5,
    )
    dm.prepare_data()
    dm.setup("fit")
    assert [r.name for _, r in dm.val_targets].count(BORDER) == 0  # validation keeps uniform clicks
    ds = dm.train_dataset()
    ds.settings = replace(ds.settings, flips=False)
    border = [i for i, (_, ref) in enumerate(ds.targets) if ref.name == BORDER]
    assert len(border) == 4 * 2
    liver = [i for i, (_, ref) in enumerate(ds.targets) if ref.name == "liver"]

    def distance_to_lesion(i: int) -> tuple[str, float]:
        item = ds[i]
        case, _ = ds.targets[i]
        label = np.asarray(ds.cache.load(case).resampled.label)
        click = item["start"].numpy() + item["first_click"].numpy().astype(int)
        assert (
            label[tuple(click)] == item["label_value"] and item["label"][0][tuple(item["first_click"].long())]
        )
        lesion = np.argwhere(label == LABELS["textured_lesion"])
        return item["class_name"], float(np.sqrt(((lesion - click) ** 2).sum(1)).min()) * 1.5

    near = [distance_to_lesion(i) for i in border]
    assert all(name == "liver" and 0 < mm <= 4.5 for name, mm in near)
    # uniform liver clicks, the only liver negatives before, seldom come that close
    # (about 1 in 19 on the seed-2 phantoms)
    torch.manual_seed(0)
    uniform = [distance_to_lesion(liver[k % len(liver)])[1] for k in range(40)]
    assert sum(mm <= 4.5 for mm in uniform) <= 10
    with pytest.raises(ConfigError, match="border_clicks need"):
        PhantomDataModule(root=str(tmp_path / "ds"), classes=["liver"], border_clicks=1)
    with pytest.raises(ConfigError, match="border_mm must be positive"):
        PhantomDataModule(root=str(tmp_path / "ds"), border_mm=0.0)


def test_the_deepest_voxel_on_the_foreground_box_is_the_whole_grid_s():
    """The distance transform on the foreground's box grown by one voxel picks the voxel the whole grid's
    does, ties included (first in C order), and at the grid's faces."""
    from scipy import ndimage

    from sammoe.interact.sliding_window import deepest_voxel

    rng = np.random.default_rng(0)
    for trial in range(40):
        fg = np.zeros((24, 20, 16), dtype=bool)
        lo = rng.integers(0, 10, 3)
        hi = lo + rng.integers(1, 12, 3)
        fg[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
        fg &= rng.random(fg.shape) > (0.3 if trial % 2 else 0.0)  # holes in half the trials
        if not fg.any():
            continue
        full = np.unravel_index(int(np.argmax(ndimage.distance_transform_edt(fg))), fg.shape)
        assert deepest_voxel(fg).tolist() == [float(v) for v in full]
