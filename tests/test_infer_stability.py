"""The confidence sammoe shows is the stability score (training-free), and it ranks masks the way their true
Dice does: on held-out phantoms with the shipped demo model, over every class the phantoms have."""

from __future__ import annotations

import numpy as np
import pytest

from sammoe.data.phantoms import LABELS, make_phantom_case
from sammoe.eval.metrics import dice
from sammoe.inference.decoding import stability_score
from sammoe.inference.predictor import Predictor, Target
from sammoe.interact.roi import seeded_first_click

HELD_OUT_SEED = 5  # no training of the shipped models used seed 5 (docs/results/foundation-tiny.md)
CASES = 6


def test_stability_is_the_iou_of_the_masks_at_logits_plus_and_minus_one():
    logits = np.array([-3.0, -0.5, 0.5, 0.9, 1.5, 4.0])
    prob = 1.0 / (1.0 + np.exp(-logits))
    assert stability_score(prob) == pytest.approx(2 / 5)  # > +1: 2 voxels; > -1: 5 voxels
    assert stability_score(prob, offset=0.6) == pytest.approx(3 / 5)
    assert stability_score(np.zeros(8)) == 0.0  # nothing segmented: no confidence


def test_stability_ranks_targets_like_their_true_dice_on_held_out_phantoms(capsys):
    from scipy.stats import spearmanr

    with pytest.warns(UserWarning, match="demo model"):
        predictor = Predictor.load("demo", device="cpu")
    stability, truth = [], []
    for case in range(CASES):
        image, label, affine = make_phantom_case([HELD_OUT_SEED, case], lps=case % 2 == 1)
        predictor.set_image(image, affine)
        targets, masks = [], []
        for name, value in LABELS.items():
            click = seeded_first_click(label == value, 233) if value else None
            if click is not None:
                targets.append(Target([click.tolist()], name=name))
                masks.append(label == value)
        seg = predictor.predict(targets)
        for result, mask in zip(seg.targets, masks):
            assert 0.0 <= result.stability <= 1.0
            assert result.summary()["stability"] == round(result.stability, 4)
            stability.append(result.stability)
            truth.append(dice(result.mask, mask))
    rho = spearmanr(stability, truth).statistic
    with capsys.disabled():
        print(f"\nstability vs Dice on {len(truth)} held-out phantom targets: Spearman {rho:.3f}")
    assert len(truth) >= 36
    assert rho >= 0.5, f"Spearman correlation of stability with Dice {rho:.3f}"
