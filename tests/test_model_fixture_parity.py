"""Parity with outputs recorded from the official SAM-Med3D code (`../shared/fixtures/sam_med3d_tiny/`)."""

from __future__ import annotations

import json

import pytest
import torch

from sammoe.loading import load_state, read_state_dict
from sammoe.model.sam3d import PRESETS, SamMed3D

pytestmark = pytest.mark.shared_data
TOL = {"atol": 1e-4, "rtol": 1e-4}


@pytest.fixture(scope="module")
def fixture_dir(shared_dir):
    return shared_dir / "fixtures" / "sam_med3d_tiny"


@pytest.fixture(scope="module")
def official_config(fixture_dir):
    return json.loads((fixture_dir / "tiny_config.json").read_text())


@pytest.fixture(scope="module")
def model(fixture_dir, official_config):
    model = SamMed3D.from_official_config(official_config)
    load_state(model, read_state_dict(fixture_dir / "tiny_sam_med3d.pth"), "fixture")
    return model.eval()


@pytest.fixture(scope="module")
def io(fixture_dir):
    return torch.load(fixture_dir / "tiny_io.pt", weights_only=True)


def _decode(model, embedding, coords, labels, masks, multimask=False):
    points = None if coords is None else (coords, labels)
    sparse, dense = model.prompt_encoder(points=points, boxes=None, masks=masks)
    logits, iou = model.mask_decoder(
        image_embeddings=embedding,
        image_pe=model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
    return sparse, dense, logits, iou


def test_tiny_preset_matches_official_config(official_config):
    assert SamMed3D.from_official_config(official_config).config == PRESETS["tiny"]


@torch.no_grad()
def test_encoder_and_dense_pe(model, io):
    torch.testing.assert_close(model.image_encoder(io["image"]), io["image_embedding"], **TOL)
    torch.testing.assert_close(model.prompt_encoder.get_dense_pe(), io["dense_pe"], **TOL)


@torch.no_grad()
def test_every_click_step(model, io):
    embedding = model.image_encoder(io["image"])
    logits = None
    for step in io["steps"]:
        sparse, dense, logits, iou = _decode(
            model, embedding, step["points_coords"], step["points_labels_as_passed"], step["mask_input"]
        )
        torch.testing.assert_close(sparse, step["sparse_embeddings"], **TOL)
        torch.testing.assert_close(dense, step["dense_embeddings"], **TOL)
        torch.testing.assert_close(logits, step["low_res_masks"], **TOL)
        torch.testing.assert_close(iou, step["iou_predictions"], **TOL)
        all_logits, all_iou = model.mask_decoder.predict_masks(
            embedding, model.prompt_encoder.get_dense_pe(), sparse, dense
        )
        torch.testing.assert_close(all_logits, step["all_low_res_masks"], **TOL)
        torch.testing.assert_close(all_iou, step["all_iou_predictions"], **TOL)
        # integer labels (as our click simulator makes them) give the same result as float ones
        _, _, logits_int, _ = _decode(
            model, embedding, step["points_coords"], step["points_labels"], step["mask_input"]
        )
        torch.testing.assert_close(logits_int, logits, atol=0, rtol=0)
    first = io["steps"][0]
    full = SamMed3D.upsample(
        _decode(model, embedding, first["points_coords"], first["points_labels"], first["mask_input"])[2], 64
    )
    torch.testing.assert_close(full, first["full_res_logits"], **TOL)
    final = SamMed3D.upsample(logits, 64)[0, 0]
    confident = final.abs() > 1e-3
    assert torch.equal((torch.sigmoid(final) > 0.5)[confident], io["final_binary_mask"][confident])


@torch.no_grad()
def test_predict_logits_is_the_first_official_step(model, io):
    first = io["steps"][0]
    logits, iou = model.predict_logits(io["image"], first["points_coords"], first["points_labels"])
    torch.testing.assert_close(logits, first["low_res_masks"], **TOL)
    torch.testing.assert_close(iou, first["iou_predictions"], **TOL)


@torch.no_grad()
def test_extra_cases(model, io):
    extra = io["extra"]
    embedding = io["image_embedding"]
    step0 = io["steps"][0]

    case = extra["no_mask"]
    sparse, dense, logits, iou = _decode(
        model, embedding, step0["points_coords"], step0["points_labels_as_passed"], None
    )
    for name, value in (("sparse", sparse), ("dense", dense), ("low_res", logits), ("iou", iou)):
        ref = next(v for k, v in case.items() if k.startswith(name))
        torch.testing.assert_close(value, ref, **TOL)

    case = extra["multimask"]
    _, _, logits, iou = _decode(
        model,
        embedding,
        step0["points_coords"],
        step0["points_labels_as_passed"],
        step0["mask_input"],
        multimask=True,
    )
    torch.testing.assert_close(logits, case["low_res_masks"], **TOL)
    torch.testing.assert_close(iou, case["iou_predictions"], **TOL)

    case = extra["mask_only"]
    sparse, dense, logits, iou = _decode(model, embedding, None, None, io["steps"][2]["low_res_masks"])
    assert sparse.shape == (1, 0, 48)
    torch.testing.assert_close(logits, case["low_res_masks"], **TOL)
    torch.testing.assert_close(iou, case["iou_predictions"], **TOL)

    case = extra["batch2"]
    images = torch.cat([io["image"], io["image"].flip(-1)])
    embedding2 = model.image_encoder(images)
    torch.testing.assert_close(embedding2, case["image_embedding"], **TOL)
    coords = torch.tensor([[[26.0, 36.0, 30.0]], [[20.0, 40.0, 50.0]]])
    labels = torch.tensor([[1], [0]])
    _, _, logits, iou = _decode(model, embedding2, coords, labels, torch.zeros(2, 1, 16, 16, 16))
    torch.testing.assert_close(logits, case["low_res_masks"], **TOL)
    torch.testing.assert_close(iou, case["iou_predictions"], **TOL)


@torch.no_grad()
def test_real_multi_window_partition(fixture_dir, official_config, io):
    """Window 3 on a 4^3 grid: padded to 6^3, eight windows, seven of them partly padding."""
    data = torch.load(fixture_dir / "encoder_window3.pt", weights_only=True)
    config = dict(official_config, image_encoder=official_config["encoder_window3"])
    model = SamMed3D.from_official_config(config).eval()
    model.image_encoder.load_state_dict(data["image_encoder_state_dict"])
    torch.testing.assert_close(model.image_encoder(io["image"]), data["image_embedding"], **TOL)
