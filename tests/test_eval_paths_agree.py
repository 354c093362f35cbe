"""The Lightning test loop (click-centred protocol) and the Predictor a user runs agree, given the same
clicks.

`sammoe test` scores the click-centred protocol through `GateTraining`'s own model; this test replays the
protocol by hand through `Predictor.load("demo")` (the shipped foundation, the installed experts, the shipped
gate: what `sammoe segment` loads) and compares Dice per class and model. A drift between the
training/evaluation stack and the inference stack (crop placement, click mapping, routing, sliding window,
inverse) shows up here.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import lightning as L
import numpy as np
import pytest
import torch

from sammoe.data.clicks import next_click_from_error
from sammoe.eval.metrics import dice
from sammoe.lit.phantom_data import PhantomDataModule

CLASSES = [
    "kidney_left",
    "spinal_cord",
    "textured_lesion",
]  # small targets keep it quick; liver grows windows
CLICKS = (1, 3)


def _installed_moe():
    from sammoe import assets
    from sammoe.loading import load_model
    from sammoe.model.moe import SamMoE

    if not assets.GATE_TINY.is_file():
        pytest.skip("no shipped gate")
    model, _ = load_model("demo", routing="gate")  # the Lightning side below routes with the shipped gate
    if not isinstance(model, SamMoE):
        pytest.skip("the installed experts do not form a MoE with the shipped gate")
    return model.expert_names


def _replay(predictor, target: np.ndarray) -> dict[int, float]:
    """The protocol by hand: seeded first click on the target, then error-region clicks inside the crop."""
    from sammoe.inference.predictor import Target

    gt = torch.from_numpy(target)[None]
    gen = torch.Generator().manual_seed(233)
    coords, _ = next_click_from_error(torch.zeros_like(gt), gt, gen)
    mask = predictor.predict(Target([coords[0, 0].long().tolist()])).targets[0].mask
    inside = torch.from_numpy(predictor.crop_footprint(0))[None]
    out = {1: dice(mask, target)}
    for n in range(2, max(CLICKS) + 1):
        coords, labels = next_click_from_error(torch.from_numpy(mask)[None] & inside, gt & inside, gen)
        mask = predictor.add_click(0, coords[0, 0].long().tolist(), positive=bool(labels[0, 0] == 1)).mask
        if n in CLICKS:
            out[n] = dice(mask, target)
    return out


def test_lightning_click_protocol_matches_the_predictor(tmp_path):
    from sammoe import assets
    from sammoe.inference.predictor import Predictor
    from sammoe.lit.gate import GateTraining

    names = _installed_moe()
    dm = PhantomDataModule(
        root=str(tmp_path / "ds"),
        cache_dir=str(tmp_path / "cache"),
        n_cases=2,
        n_test=2,
        phantom_seed=11,
        crop_size=64,
        classes=CLASSES,
        eval_split="test",
    )
    module = GateTraining(
        gate=str(assets.GATE_TINY),
        tune_tau=False,
        click_counts=list(CLICKS),
        nsd_tolerance_mm=None,
        overlay_images=False,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=dm)
    lightning = defaultdict(list)
    with open(tmp_path / "test" / "results.csv") as handle:
        for row in csv.DictReader(handle):
            lightning[(row["model"], row["class_name"], int(row["n_clicks"]))].append(float(row["dice"]))
    assert (tmp_path / "test" / "official_bbox" / "results.csv").is_file()

    replayed = defaultdict(list)
    dm.setup("test")
    items = [dm.eval_dataset()[i] for i in range(len(dm.test_targets))]
    for model_name, route in [("moe", None), *[(n, n) for n in names]]:
        predictor = Predictor.load("demo", route=route, routing="gate")
        for item in items:
            if item["class_name"] not in CLASSES:
                continue
            predictor.set_image(item["volume"])
            for n, value in _replay(predictor, item["target"]).items():
                replayed[(model_name, item["class_name"], n)].append(value)
    assert set(replayed) <= set(lightning)
    for key, values in replayed.items():
        assert len(values) == len(lightning[key])
        assert abs(np.mean(values) - np.mean(lightning[key])) <= 0.01, key
