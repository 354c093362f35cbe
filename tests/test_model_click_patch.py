"""The block of voxels around the click and the CNN that reads it (``sammoe.model.click_patch``): what the
block holds, that the CNN branch learns what the statistics cannot, and how routers and gates with it travel
on disk."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sammoe.errors import CheckpointError
from sammoe.loading import load_gate, save_gate
from sammoe.loading.router import load_router_file, save_router
from sammoe.model.click_patch import PATCH_CLIP, PATCH_SCALE, click_patch
from sammoe.model.gate import RoutingHead, crop_noise, routing_feature_count, routing_features
from sammoe.model.moe import SamMoE
from sammoe.model.router import ExpertRouter


def _noisy(seed: int = 0, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 1, size, size, size, generator=gen)


def test_the_block_is_centred_on_the_click_and_free_of_intensity_scale():
    image = _noisy()
    image[0, 0, 10, 20, 5] = 8.0  # a marked voxel at the click
    noise = crop_noise(image)
    block = click_patch(image, [(0, [10, 20, 5])], 1, 3, noise).view(7, 7, 7)
    assert block[3, 3, 3] == block.max()  # the marked voxel is the centre
    expected = (image[0, 0, 7:14, 17:24, 2:9] / noise[0]).sub_(
        (image[0, 0, 7:14, 17:24, 2:9] / noise[0]).median()
    )
    torch.testing.assert_close(block, expected.clamp(-PATCH_CLIP, PATCH_CLIP) / PATCH_SCALE)
    # a scanner's scale and offset (and the crop's z-normalisation) leave it unchanged
    scaled = image * 40.0 + 1000.0
    torch.testing.assert_close(
        click_patch(scaled, [(0, [10, 20, 5])], 1, 3, crop_noise(scaled)).view(7, 7, 7),
        block,
        atol=1e-4,
        rtol=0,
    )


def test_the_block_repeats_the_crop_faces_and_clips_outliers():
    image = _noisy(1, 16)
    image[0, 0, 0, 0, 0] = 1e4  # air or bone next to the click
    noise = crop_noise(image)
    block = click_patch(image, [(0, [0, 0, 0])], 1, 4, noise).view(9, 9, 9)
    # voxels beyond the low faces repeat the face voxel, here the outlier, clipped to the range
    assert torch.all(block[:5, :5, :5] == PATCH_CLIP / PATCH_SCALE)
    assert block.abs().max() <= PATCH_CLIP / PATCH_SCALE
    # samples without a click get zeros; a batch of one image serves several samples
    two = click_patch(image, [(1, [8, 8, 8])], 2, 4, noise)
    assert two.shape == (2, 9**3) and torch.all(two[0] == 0) and two[1].abs().sum() > 0


def _blocky_or_fine(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of 3^3 voxels with random levels (a coarse texture) or voxel-wise noise of the same spread:
    equal mean and standard deviation, so only the spatial structure tells them apart."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen).float()
    fine = torch.randn(n, 1, 15, 15, 15, generator=gen)
    coarse = torch.randn(n, 1, 5, 5, 5, generator=gen)
    coarse = coarse.repeat_interleave(3, 2).repeat_interleave(3, 3).repeat_interleave(3, 4)
    blocks = torch.where(labels.view(n, 1, 1, 1, 1) > 0, coarse, fine)
    blocks = blocks / blocks.flatten(1).std(1).view(n, 1, 1, 1, 1)
    return blocks.flatten(1), labels


def test_the_cnn_branch_learns_a_texture_that_mean_and_spread_cannot_show():
    torch.manual_seed(0)
    embed_dim = 4
    base = routing_feature_count(embed_dim, (), False)
    head = RoutingHead(
        embed_dim, 1, hidden_dim=16, dropout=0.0, local_radii=(), texture=False, patch_radius=7
    )
    assert head.reads_image and head.layout == ((), False, False, 7, True)
    blocks, labels = _blocky_or_fine(96, 0)
    features = torch.cat([torch.randn(96, base), blocks], 1)  # the trunk features carry nothing here
    optimiser = torch.optim.Adam(head.parameters(), 3e-3)
    for _ in range(40):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(head(features).squeeze(1), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test_blocks, test_labels = _blocky_or_fine(64, 1)
    head.eval()
    with torch.no_grad():
        logits = head(torch.cat([torch.randn(64, base), test_blocks], 1)).squeeze(1)
    assert ((logits > 0).float() == test_labels).float().mean() >= 0.95


@torch.no_grad()
def test_routers_and_gates_with_a_click_patch_round_trip(seeded_tiny_model, tmp_path):
    image = _noisy(2, 64)
    clicks = torch.tensor([[[32.0, 20.0, 50.0]], [[12.0, 32.0, 32.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    emb = seeded_tiny_model.image_encoder(image).expand(2, -1, -1, -1, -1)
    sparse, _ = seeded_tiny_model.prompt_encoder(points=(clicks, labels), boxes=None, masks=None)
    router = ExpertRouter(
        seeded_tiny_model.config.prompt_embed_dim, hidden_dim=8, robust_texture=True, patch_radius=7
    ).eval()
    features = routing_features(
        emb, sparse, clicks, labels, seeded_tiny_model.img_size, image, *router.layout
    )
    assert features.shape[1] == routing_feature_count(
        seeded_tiny_model.config.prompt_embed_dim, *router.layout
    )
    # the block is the last part of the features: the click voxel's value sits at its centre
    centre = features[0, -(15**3) :].view(15, 15, 15)[7, 7, 7]
    block = click_patch(image, [(0, [32, 20, 50])], 1, 7, crop_noise(image))
    assert centre == block.view(15, 15, 15)[7, 7, 7]
    path = save_router(
        router, tmp_path / "r.safetensors", name="a", classes={"a": 1}, backbone=seeded_tiny_model, metrics={}
    )
    loaded = load_router_file(path, seeded_tiny_model, "a")
    assert loaded.patch_radius == 7 and loaded.layout == router.layout
    torch.testing.assert_close(loaded.probability(features), router.probability(features))
    # a router that reads only the block around the click: no trunk features, the block alone
    patch_only = ExpertRouter(
        seeded_tiny_model.config.prompt_embed_dim,
        hidden_dim=8,
        local_radii=(),
        texture=False,
        patch_radius=7,
        trunk=False,
    ).eval()
    block_only = routing_features(
        emb, sparse, clicks, labels, seeded_tiny_model.img_size, image, *patch_only.layout
    )
    torch.testing.assert_close(block_only, features[:, -(15**3) :])
    # it needs no image embedding (router training skips the encoder for it)
    no_trunk = routing_features(
        None, sparse, clicks, labels, seeded_tiny_model.img_size, image, *patch_only.layout
    )
    torch.testing.assert_close(no_trunk, block_only)
    only_path = save_router(
        patch_only,
        tmp_path / "p.safetensors",
        name="a",
        classes={"a": 1},
        backbone=seeded_tiny_model,
        metrics={},
    )
    reloaded = load_router_file(only_path, seeded_tiny_model, "a")
    assert not reloaded.trunk and reloaded.layout == patch_only.layout
    torch.testing.assert_close(reloaded.probability(block_only), patch_only.probability(block_only))
    with pytest.raises(ValueError, match="needs local statistics or a patch"):
        ExpertRouter(seeded_tiny_model.config.prompt_embed_dim, local_radii=(), texture=False, trunk=False)
    # a damaged radius is refused with one line naming the file
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(state, str(tmp_path / "bad.safetensors"), {**meta, "patch_radius": "2"})
    with pytest.raises(
        CheckpointError, match=r"bad\.safetensors: router metadata out of range.*patch_radius 2"
    ):
        load_router_file(tmp_path / "bad.safetensors", seeded_tiny_model, "a")
    # the gate: same layout on disk
    experts = {"lesion": copy.deepcopy(seeded_tiny_model.mask_decoder)}
    gate_moe = SamMoE(seeded_tiny_model, experts, gate_patch_radius=7).eval()
    assert gate_moe.reads_image
    gate_path = save_gate(gate_moe, tmp_path / "gate.safetensors")
    other = SamMoE(seeded_tiny_model, experts).eval()
    load_gate(other, gate_path)
    assert other.gate.patch_radius == 7
    mask = torch.zeros(2, 1, 16, 16, 16)
    torch.testing.assert_close(
        other.step(emb, clicks, labels, mask, image=image).probs,
        gate_moe.step(emb, clicks, labels, mask, image=image).probs,
    )
