"""ExpertFinetune: what trains, the optimiser recipe, the export that `sammoe experts package` reads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sammoe.errors import CheckpointError
from sammoe.lit.finetune import ExpertFinetune
from sammoe.loading import load_backbone


def _batch(bsz: int = 2, size: int = 64) -> dict:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(bsz, 1, size, size, size, generator=gen)
    label = torch.zeros(bsz, 1, size, size, size)
    label[:, :, 20:36, 24:40, 18:30] = 1
    return {
        "image": image,
        "label": label,
        "case_id": [f"c{i}" for i in range(bsz)],
        "class_name": ["spinal_cord"] * bsz,
    }


def _grads(module: torch.nn.Module) -> dict[str, bool]:
    return {
        name: p.grad is not None and bool(p.grad.abs().sum() > 0) for name, p in module.named_parameters()
    }


def test_decoder_sft_trains_only_the_decoder():
    model = ExpertFinetune(checkpoint="seeded", trainable="decoder", num_iterations=3)
    loss = model.training_step(_batch(), 0)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    loss.backward()
    bb = model.backbone
    assert not any(p.requires_grad for p in bb.image_encoder.parameters())
    assert not any(p.requires_grad for p in bb.prompt_encoder.parameters())
    assert all(g is False for g in _grads(bb.image_encoder).values())
    assert all(g is False for g in _grads(bb.prompt_encoder).values())
    decoder = _grads(bb.mask_decoder)
    assert any(decoder.values())
    # every trainable parameter takes part in the graph (plain DDP needs no find_unused_parameters)
    trainable = [p for p in bb.mask_decoder.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    # the frozen starting decoder is kept for the foundation comparison and does not train
    assert model.foundation_decoder is not None
    assert not any(p.requires_grad for p in model.foundation_decoder.parameters())


def test_optimizer_follows_the_official_recipe():
    model = ExpertFinetune(checkpoint="seeded", trainable="all", lr=8e-4)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx([8e-5, 8e-4])  # prompt encoder + decoder at 0.1 x the encoder lr
    assert all(g["weight_decay"] == 0.1 for g in opt.param_groups)
    enc = {id(p) for p in model.backbone.image_encoder.parameters()}
    (enc_group,) = [g for g in opt.param_groups if g["lr"] == pytest.approx(8e-4)]
    assert {id(p) for p in enc_group["params"]} == enc
    sft = ExpertFinetune(checkpoint="seeded", trainable="decoder+prompt", lr_milestones=[3], lr=1e-3)
    conf = sft.configure_optimizers()
    (group,) = conf["optimizer"].param_groups
    ids = {id(p) for p in group["params"]}
    assert ids <= {
        id(p) for p in [*sft.backbone.prompt_encoder.parameters(), *sft.backbone.mask_decoder.parameters()]
    }
    assert isinstance(conf["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.MultiStepLR)
    assert sft.foundation_decoder is None  # the prompt encoder changes: no like-for-like baseline


def test_all_trains_encoder_with_grad():
    model = ExpertFinetune(checkpoint="seeded", trainable="all", num_iterations=2, name="foundation")
    model.training_step(_batch(1), 0).backward()
    assert any(_grads(model.backbone.image_encoder).values())
    assert model.foundation_decoder is None


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(ValueError, match="trainable"):
        ExpertFinetune(checkpoint="seeded", trainable="encoder")  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="not found"):
        ExpertFinetune(checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="unknown preset"):
        ExpertFinetune(preset="vit_h", checkpoint="seeded")


def test_export_is_what_experts_package_reads(tmp_path):
    from sammoe.model.sam3d import backbone_fingerprint
    from sammoe.publish.package import package_expert, read_checkpoint

    task = {"classes": {"spinal_cord": 5}, "modality": "CT", "dataset": "phantom-spinal_cord"}
    model = ExpertFinetune(name="spinal_cord", checkpoint="seeded", task=task)
    with torch.no_grad():
        for p in model.backbone.mask_decoder.parameters():
            p.add_(0.01)
    target = model.export(tmp_path / "expert" / "decoder.safetensors")
    meta = json.loads(target.with_suffix(".json").read_text())
    assert meta["preset"] == "tiny" and meta["task"] == task
    assert meta["backbone_fingerprint"] == backbone_fingerprint(model.backbone)
    assert meta["provenance"]["finetuned"] is True
    ckpt = read_checkpoint(target)
    own = model.backbone.mask_decoder.state_dict()
    assert set(ckpt.decoder) == set(own)
    assert all(torch.equal(ckpt.decoder[k], own[k]) for k in own)
    out = package_expert(target, "spinal_cord", tmp_path / "pkg")
    manifest = json.loads((out / "sammoe_expert_spinal_cord" / "manifest.json").read_text())
    assert manifest["task"]["classes"] == {"spinal_cord": 5}
    assert manifest["backbone"]["fingerprint"] == meta["backbone_fingerprint"]


def test_full_model_export_roundtrips(tmp_path):

    model = ExpertFinetune(name="foundation", checkpoint="seeded", trainable="all")
    path = model.export(tmp_path / "model.safetensors")
    again = load_backbone(path, "tiny")
    state = model.backbone.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in again.state_dict().items())
    # and it is a valid starting checkpoint
    ExpertFinetune(checkpoint=str(path))
