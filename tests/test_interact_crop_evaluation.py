"""Shared evaluation: official click protocol per target, original-grid metrics, empty-GT rule, DDP merge."""

from __future__ import annotations

import math

import pytest
import torch

from sammoe.eval.results import merge_rows
from sammoe.interact.crop_evaluation import EvalModel, as_eval_batch, evaluate_batch, target_metrics
from sammoe.interact.rollout import StepOutput
from sammoe.model.sam3d import SamMed3D

LOW = 16


def _oracle_step(gt: torch.Tensor):
    """A 'model' that predicts the ground truth from the first click on (low-res logits of the GT)."""

    def step(emb, points, labels, mask_prompt):
        low = torch.nn.functional.interpolate(gt.float(), size=(LOW,) * 3, mode="trilinear")
        return StepOutput((low - 0.5) * 40)

    return step


def _empty_step(emb, points, labels, mask_prompt):
    return StepOutput(torch.full((emb.shape[0], 1, LOW, LOW, LOW), -10.0))


def _batch() -> dict:
    label = torch.zeros(2, 1, 64, 64, 64)
    label[0, :, 16:48, 16:48, 16:48] = 1  # second target: empty ground truth
    return {
        "image": torch.randn(2, 1, 64, 64, 64),
        "label": label,
        "case_id": ["a", "b"],
        "dataset": ["ds", "ds"],
        "class_name": ["liver", "liver"],
    }


def test_rows_per_model_target_and_click_count_with_the_empty_gt_rule():
    batch = _batch()
    emb = torch.zeros(2, 8, 4, 4, 4)
    models = [
        EvalModel("perfect", lambda b: _oracle_step(batch["label"][b : b + 1])),
        EvalModel("empty", lambda b: _empty_step),
    ]
    result = evaluate_batch(
        models, emb, batch, click_counts=(1, 3), low_res_size=LOW, tolerance_mm=1.0, keep_examples=2
    )
    rows = {(r.model, r.case_id, r.n_clicks): r for r in result.rows}
    assert len(rows) == 2 * 2 * 2
    assert rows[("perfect", "ds/a", 1)].dice > 0.98  # the low-res (16^3) logits of the GT, upsampled
    assert rows[("perfect", "ds/a", 3)].nsd > 0.9
    assert rows[("empty", "ds/a", 1)].dice == 0.0 and rows[("empty", "ds/a", 1)].nsd == 0.0
    # empty ground truth: empty prediction -> NaN (left out of means)
    assert math.isnan(rows[("empty", "ds/b", 1)].dice) and math.isnan(rows[("empty", "ds/b", 1)].nsd)
    assert all(r.class_group == "general" for r in result.rows)
    assert [(e.model, e.case_id) for e in result.examples] == [("perfect", "ds/a"), ("empty", "ds/a")]


def test_click_protocol_is_seeded_per_target():
    """Each target is evaluated alone with seed 233: its clicks do not depend on its batch neighbours."""
    seen = []

    def recording(b):
        def step(emb, points, labels, mask_prompt):
            seen.append((b, points.clone()))
            return _empty_step(emb, points, labels, mask_prompt)

        return step

    batch = _batch()
    batch["label"][1, :, 8:20, 8:20, 8:20] = 1
    emb = torch.zeros(2, 8, 4, 4, 4)
    evaluate_batch(
        [EvalModel("m", recording)], emb, batch, click_counts=(2,), low_res_size=LOW, tolerance_mm=None
    )
    alone = {k: v for k, v in batch.items()}
    alone.update(
        image=batch["image"][1:],
        label=batch["label"][1:],
        case_id=["b"],
        dataset=["ds"],
        class_name=["liver"],
    )
    first = [p for b, p in seen if b == 1]
    seen.clear()
    evaluate_batch(
        [EvalModel("m", recording)], emb[1:], alone, click_counts=(2,), low_res_size=LOW, tolerance_mm=None
    )
    assert all(torch.equal(a, b) for a, (_, b) in zip(first, seen))


def test_ddp_duplicates_count_once():
    batch = _batch()
    emb = torch.zeros(2, 8, 4, 4, 4)
    model = [EvalModel("empty", lambda b: _empty_step)]
    rank0 = evaluate_batch(model, emb, batch, click_counts=(1,), low_res_size=LOW, tolerance_mm=None).rows
    rank1 = evaluate_batch(
        model,
        emb[:1],
        {**batch, "label": batch["label"][:1], "image": batch["image"][:1]},
        click_counts=(1,),
        low_res_size=LOW,
        tolerance_mm=None,
    ).rows
    assert len(merge_rows(rank0, rank1)) == 2


@pytest.fixture(scope="module")
def phantom_test_items(tmp_path_factory):
    from sammoe.data.phantoms import make_phantom_dataset
    from sammoe.lit.phantom_data import PhantomDataModule

    root = tmp_path_factory.mktemp("phantoms")
    make_phantom_dataset(root / "ds", n_cases=1, n_test=1, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    dm = PhantomDataModule(root=str(root / "ds"), n_cases=1, n_test=1, crop_size=64, classes=["kidney_left"])
    dm.setup("test")
    return [dm.eval_dataset()[i] for i in range(len(dm.eval_dataset()))]


def test_metrics_on_the_original_grid(phantom_test_items):
    batch = as_eval_batch(phantom_test_items)
    assert batch is not None and batch["image"].shape[1:] == (1, 64, 64, 64)
    assert batch["orig_label"][0].shape == phantom_test_items[0]["volume"].shape
    emb = torch.zeros(1, 8, 4, 4, 4)
    step = _oracle_step(batch["label"])
    result = evaluate_batch(
        [EvalModel("perfect", lambda b: step)], emb, batch, click_counts=(1,), low_res_size=LOW
    )
    (row,) = result.rows
    assert row.dice > 0.6 and row.nsd > 0.6  # a low-res copy of a small structure
    # the row scores the prediction mapped back onto the original grid, against the original label
    pred = torch.sigmoid(SamMed3D.upsample(step(emb, None, None, None).logits, 64)) > 0.5
    assert (row.dice, row.nsd) == pytest.approx(target_metrics(pred[0, 0], 0, batch, (1.5, 1.5, 1.5), 1.0))
    # the ROI ground truth itself, pushed back through the inverse, matches the original-grid label
    dice, nsd = target_metrics(batch["label"][0, 0].bool(), 0, batch, (1.5, 1.5, 1.5), 1.0)
    assert dice > 0.95 and nsd > 0.95
    # and it really is scored on the original grid (a different shape from the ROI)
    assert batch["orig_label"][0].shape != (64, 64, 64)


def test_items_without_a_crop_are_left_out(phantom_test_items):
    items = [dict(phantom_test_items[0], roi=None)]
    assert as_eval_batch(items) is None
    assert as_eval_batch({"image": 1}) == {"image": 1}


def test_wandb_gets_dice_tables_confusion_matrix_and_overlays(tmp_path, monkeypatch):
    """log_evaluation on an offline WandbLogger: per-click Dice tables, routing confusion, overlays."""
    import time
    from types import SimpleNamespace

    import numpy as np
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    from sammoe.eval.report import build_report
    from sammoe.eval.results import EvalRow
    from sammoe.interact.crop_evaluation import EvalExample
    from sammoe.lit.wandb_log import log_evaluation

    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = [
        EvalRow(m, f"c{i}", cls, grp, k, 0.5 + 0.1 * i, routed_expert=routed, oracle_expert=oracle)
        for i in range(2)
        for k in (1, 5)
        for cls, grp, oracle in (("liver", "general", "foundation"), ("spinal_cord", "task", "spinal_cord"))
        for m, routed in (("foundation", None), ("moe", "spinal_cord" if i else oracle))
    ]
    report = build_report(rows)
    logger = WandbLogger(project="t", save_dir=str(tmp_path / "run"))
    mask = np.zeros((16, 16, 16), bool)
    mask[4:10, 4:10, 4:10] = True
    example = EvalExample("moe", "c0", "liver", 5, np.random.rand(16, 16, 16), mask, mask, 1.0)
    assert log_evaluation(SimpleNamespace(loggers=[logger], global_step=3), "val", report, [example])
    assert not log_evaluation(SimpleNamespace(loggers=[], global_step=3), "val", report)
    wandb.finish()
    (run,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    media = run / "files" / "media"
    tables = {
        p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in (media / "table" / "val").glob("*.json")
    }
    assert {"dice_1", "dice_5", "nsd_1", "routing_counts"} <= tables, tables
    assert list((media / "images" / "val").glob("overlays*.png"))
    deadline = time.time() + 20
    while b"routing_confusion" not in next(run.glob("run-*.wandb")).read_bytes() and time.time() < deadline:
        time.sleep(0.5)
    assert b"routing_confusion" in next(run.glob("run-*.wandb")).read_bytes()
