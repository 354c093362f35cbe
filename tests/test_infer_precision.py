"""The automatic precision: bf16 autocast where it pays (GPUs; CPUs with native bf16 for ViT-B-wide encoders),
float32 elsewhere, and bf16 results that agree with float32."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from sammoe.inference import devices
from sammoe.inference.predictor import Predictor, Target
from sammoe.model.randomize import randomize_constant_init
from sammoe.model.sam3d import PRESETS, SamMed3D


def test_bf16_is_chosen_only_where_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    assert devices.bf16_pays(cpu, 768) and not devices.bf16_pays(cpu, 96)
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    assert not devices.bf16_pays(cpu, 768)


def test_the_demo_model_stays_float32_on_a_cpu_and_the_report_says_which(monkeypatch):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor.load("demo", experts="none", device="cpu")
    assert predictor.autocast is False and predictor.info["precision"] == "float32"
    forced = Predictor(predictor.model, "cpu", autocast=True)
    assert forced.autocast is True and forced.info["precision"] == "bf16 autocast"


@pytest.mark.shared_data
def test_vit_b_bf16_logits_agree_with_float32_on_a_real_mri(shared_dir):
    """Random turbo-shaped weights (speed and rounding do not depend on training): the low-res logits of the
    first click differ by at most 3% of their range, and their signs (the mask) agree on >= 99% of voxels."""
    torch.manual_seed(0)
    model = randomize_constant_init(SamMed3D(PRESETS["vit_b_ori"]), 1).eval()
    image = shared_dir / "data" / "colin27" / "ch2.nii.gz"
    logits = {}
    for autocast in (False, True):
        predictor = Predictor(model, "cpu", autocast=autocast, use_sliding_window=False)
        volume = predictor.set_image(image)
        click = (np.linalg.inv(volume.affine) @ np.array([-24.9, 3.9, 2.4, 1.0]))[:3]
        predictor.predict(Target([click]))
        logits[autocast] = predictor._states[0].low.float()
    fp32, bf16 = logits[False], logits[True]
    assert ((fp32 - bf16).abs().max() / fp32.abs().max()).item() <= 0.03
    assert ((fp32 > 0) == (bf16 > 0)).float().mean().item() >= 0.99
    assert not torch.equal(fp32, bf16)  # bf16 really ran
