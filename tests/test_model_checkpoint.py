"""Checkpoint formats and every way a weights file can be wrong."""

from __future__ import annotations

import argparse
import pathlib

import pytest
import torch

from sammoe.errors import CheckpointError
from sammoe.loading import load_backbone, preset_of, save_backbone
from sammoe.model.sam3d import PRESETS, SamMed3D, backbone_fingerprint


@pytest.mark.shared_data
def test_turbo_preset_has_the_official_keys_and_shapes(shared_dir):
    expected = {}
    for line in (shared_dir / "fixtures" / "sam_med3d_vitb_keys.txt").read_text().splitlines():
        key, shape = line.split("\t")
        expected[key] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    with torch.device("meta"):
        model = SamMed3D(PRESETS["vit_b_ori"])
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert len(got) == 324
    assert sum(v.numel() for v in model.parameters()) == 100_509_232


def test_official_training_checkpoint_with_extras_loads(seeded_tiny_model, tmp_path):
    """train.py also saves optimizer state, epoch and argparse args beside model_state_dict."""
    path = tmp_path / "sam_model_latest.pth"
    torch.save(
        {
            "epoch": 3,
            "model_state_dict": seeded_tiny_model.state_dict(),
            "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 8e-5}]},
            "losses": [0.5, 0.4],
            "args": argparse.Namespace(lr=8e-5, model_type="vit_b_ori", multi_click=False),
        },
        path,
    )
    fresh = load_backbone(path, "tiny")
    for key, value in seeded_tiny_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_ddp_prefix_is_stripped(seeded_tiny_model, tmp_path):
    path = tmp_path / "ddp.pth"
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in seeded_tiny_model.state_dict().items()}}, path
    )
    fresh = load_backbone(path, "tiny")
    assert fresh.state_dict().keys() == seeded_tiny_model.state_dict().keys()
    assert all(torch.equal(v, seeded_tiny_model.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_safetensors_round_trip(seeded_tiny_model, tmp_path):
    path = save_backbone(seeded_tiny_model, tmp_path / "tiny.safetensors")
    fresh = load_backbone(path, "tiny")
    assert backbone_fingerprint(fresh) == backbone_fingerprint(seeded_tiny_model)
    assert torch.equal(fresh.mask_decoder.iou_token.weight, seeded_tiny_model.mask_decoder.iou_token.weight)


def _save_state(state, path):
    torch.save({"model_state_dict": state}, path)
    return path


def test_missing_key_is_named(seeded_tiny_model, tmp_path):
    state = dict(seeded_tiny_model.state_dict())
    del state["mask_decoder.iou_token.weight"]
    with pytest.raises(CheckpointError, match=r"missing mask_decoder\.iou_token\.weight \(1, 48\)"):
        load_backbone(_save_state(state, tmp_path / "m.pth"), "tiny")


def test_shape_mismatch_is_named(seeded_tiny_model, tmp_path):
    state = dict(seeded_tiny_model.state_dict())
    state["image_encoder.pos_embed"] = torch.zeros(1, 8, 8, 8, 32)
    with pytest.raises(
        CheckpointError, match=r"image_encoder\.pos_embed has shape \(1, 8, 8, 8, 32\).*\(1, 4, 4, 4, 32\)"
    ):
        load_backbone(_save_state(state, tmp_path / "s.pth"), "tiny")


def test_turbo_checkpoint_into_tiny_preset_says_pick_the_preset(tmp_path):
    with torch.device("meta"):
        turbo_keys = SamMed3D(PRESETS["vit_b_ori"]).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in turbo_keys.items() if k.startswith("prompt_encoder")}
    with pytest.raises(CheckpointError, match="pick the preset"):
        load_backbone(_save_state(state, tmp_path / "t.pth"), "tiny")


def test_unexpected_key_is_named(seeded_tiny_model, tmp_path):
    state = dict(seeded_tiny_model.state_dict(), **{"mask_decoder.extra_head.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected mask_decoder\.extra_head\.weight"):
        load_backbone(_save_state(state, tmp_path / "u.pth"), "tiny")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_corrupt_and_truncated_files(seeded_tiny_model, tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    if suffix == ".pth":
        _save_state(seeded_tiny_model.state_dict(), good)
    else:
        save_backbone(seeded_tiny_model, good)
    data = good.read_bytes()
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"<html>404 not found</html>" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError) as info:
            load_backbone(bad, "tiny")
        assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_backbone(tmp_path / "nope.pth", "tiny")


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a checkpoint that needs arbitrary classes is refused, never executed."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {"x": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_backbone(path, "tiny")
    assert not marker.exists()


def test_unknown_preset():
    with pytest.raises(CheckpointError, match="unknown preset 'vit_h'"):
        SamMed3D.from_preset("vit_h")


def test_fingerprint_tracks_trunk_only(seeded_tiny_model):
    other = SamMed3D.from_preset("tiny")
    other.load_state_dict(seeded_tiny_model.state_dict())
    assert backbone_fingerprint(other) == backbone_fingerprint(seeded_tiny_model)
    with torch.no_grad():
        other.mask_decoder.iou_token.weight.add_(1)
    assert backbone_fingerprint(other) == backbone_fingerprint(seeded_tiny_model)
    with torch.no_grad():
        other.image_encoder.pos_embed.add_(1e-3)
    assert backbone_fingerprint(other) != backbone_fingerprint(seeded_tiny_model)


def test_input_size_and_prompt_errors(seeded_tiny_model):
    with pytest.raises(ValueError, match=r"expects \(B, 1, 64, 64, 64\)"):
        seeded_tiny_model.image_encoder(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="box prompts are not supported"):
        seeded_tiny_model.prompt_encoder(points=None, boxes=torch.zeros(1, 6), masks=None)
    with pytest.raises(ValueError, match=r"mask prompt must be \(B, 1, 16, 16, 16\)"):
        seeded_tiny_model.prompt_encoder(points=None, boxes=None, masks=torch.zeros(1, 1, 8, 8, 8))


def test_auto_preset_blames_the_real_difference(seeded_tiny_model, tmp_path):
    """The preset is recognised from the tensor shapes in one read: a tiny checkpoint missing one rel_pos
    table is reported as that missing table of the closest preset (tiny), not as a shape mismatch of the
    first preset tried."""
    state = dict(seeded_tiny_model.state_dict())
    key = next(k for k in state if k.endswith("rel_pos_h"))
    del state[key]
    with pytest.raises(
        CheckpointError, match=rf"matches no SAM-Med3D preset; closest is tiny: missing {key}"
    ) as err:
        load_backbone(_save_state(state, tmp_path / "r.pth"))
    assert "proj.bias" not in str(err.value)
    assert (
        preset_of(load_backbone(_save_state(dict(seeded_tiny_model.state_dict()), tmp_path / "ok.pth")))
        == "tiny"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda v: v.fill_(float("nan")), "NaN or infinite"),
        (lambda v: v.to(torch.int32), "expected floating-point weights"),
    ],
)
def test_non_finite_or_integer_weights_are_refused(seeded_tiny_model, tmp_path, change, message):
    state = {k: v.clone() for k, v in seeded_tiny_model.state_dict().items()}
    key = "mask_decoder.iou_token.weight"
    state[key] = change(state[key])
    with pytest.raises(CheckpointError, match=f"{key.replace('.', '[.]')}.*{message}"):
        load_backbone(_save_state(state, tmp_path / "w.pth"), "tiny")


def test_lightning_checkpoint_of_a_finetuning_run_loads(seeded_tiny_model, tmp_path):
    state = {f"backbone.{k}": v for k, v in seeded_tiny_model.state_dict().items()}
    state["foundation_decoder.iou_token.weight"] = torch.zeros(1, 48)
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    loaded = load_backbone(path)
    assert all(torch.equal(v, seeded_tiny_model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_named_backbones_turbo_needs_a_fetch_and_demo_is_the_shipped_model():
    from sammoe.errors import CheckpointError
    from sammoe.loading import load_backbone

    with pytest.raises(CheckpointError, match="sammoe weights fetch turbo"):
        load_backbone("turbo")
    demo, shipped = load_backbone("demo"), load_backbone(None)
    assert all(torch.equal(a, b) for a, b in zip(demo.state_dict().values(), shipped.state_dict().values()))
