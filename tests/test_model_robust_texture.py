"""Edge-robust texture statistics (``sammoe.model.gate.robust_texture_stats``): what lets a router tell a
textured lesion from the border of a flat organ, and how routers and gates that read them travel on disk."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sammoe.errors import CheckpointError
from sammoe.loading import load_gate, save_gate
from sammoe.loading.router import load_router_file, save_router
from sammoe.model.gate import (
    ROBUST_TEXTURE_COUNT,
    SPLIT_RADII,
    robust_texture_stats,
    routing_feature_count,
    routing_features,
    split_residual_std,
)
from sammoe.model.moe import SamMoE
from sammoe.model.router import ExpertRouter


def _brute_force_split(values: torch.Tensor) -> float:
    """Pooled within-class std of the best split into {v <= t} and {v > t}, over every threshold t."""
    v = values.double()
    best = float(v.var(correction=0))
    for t in v.unique()[:-1]:
        low, high = v[v <= t], v[v > t]
        within = (low.var(correction=0) * low.numel() + high.var(correction=0) * high.numel()) / v.numel()
        best = min(best, float(within))
    return best**0.5


def test_split_residual_is_the_best_two_class_split():
    gen = torch.Generator().manual_seed(0)
    for n in (2, 3, 7, 40):
        values = torch.randn(n, generator=gen)
        assert float(split_residual_std(values)) == pytest.approx(
            _brute_force_split(values), rel=1e-5, abs=1e-6
        )
    two_flat = torch.cat([torch.zeros(30), torch.full((20,), 9.0)])
    assert float(split_residual_std(two_flat)) == 0.0
    # a Gaussian keeps 1 - 2/pi of its variance after the best split: std ratio sqrt(0.363) = 0.603
    gauss = torch.randn(20000, generator=gen)
    assert float(split_residual_std(gauss)) / float(gauss.std()) == pytest.approx(0.603, abs=0.01)
    assert float(split_residual_std(torch.ones(1))) == 0.0


def _organ_with_border_and_lesion() -> tuple[torch.Tensor, torch.Tensor]:
    """A noisy flat organ beside a brighter flat organ (a border at x = 32), and a coarse texture with the
    organ's mean inside it; clicks on the border, on the texture's rim-free centre and inside the organ."""
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, 1, 64, 64, 64, generator=gen) * 0.1
    image[..., 32:, :, :] += 3.0  # the neighbouring organ: a step 30x the noise
    blocks = torch.randn(1, 1, 8, 8, 8, generator=gen)
    texture = blocks.repeat_interleave(2, 2).repeat_interleave(2, 3).repeat_interleave(2, 4)
    image[..., 4:20, 24:40, 24:40] += texture - texture.mean()
    clicks = torch.tensor([[[32.0, 20.0, 50.0]], [[12.0, 32.0, 32.0]], [[16.0, 50.0, 10.0]]])
    return image, clicks


def test_a_border_between_flat_organs_does_not_look_like_texture():
    image, clicks = _organ_with_border_and_lesion()
    labels = torch.ones(3, 1, dtype=torch.long)
    stats = robust_texture_stats(image, clicks, labels)
    assert stats.shape == (3, ROBUST_TEXTURE_COUNT)
    border, lesion, organ = stats
    for j in range(len(SPLIT_RADII)):  # at every cube size from 5 voxels up
        residual, plain = 2 * j, 2 * j + 1
        if SPLIT_RADII[j] >= 2:
            assert border[plain] > lesion[plain]  # the step's plain spread is the larger one ...
            assert lesion[residual] > border[residual] + 1.0  # ... but a split explains it, not the texture
        assert abs(float(organ[residual]) - float(border[residual])) < 1.0  # border residual ~ flat organ
    # scale and offset free (the crop's noise is the unit); no click: zeros
    torch.testing.assert_close(
        robust_texture_stats(image * 5.0 - 2.0, clicks, labels), stats, atol=1e-3, rtol=0
    )
    assert torch.equal(robust_texture_stats(image, None, None), torch.zeros(1, ROBUST_TEXTURE_COUNT))
    # clicks at the crop's corners: cubes are clipped, values stay finite
    corners = torch.tensor([[list(c)] for c in itertools.product((0.0, 63.0), repeat=3)])
    assert torch.isfinite(robust_texture_stats(image, corners, torch.ones(8, 1, dtype=torch.long))).all()


@torch.no_grad()
def test_routers_and_gates_reading_robust_texture_round_trip(seeded_tiny_model, tmp_path):
    image, clicks = _organ_with_border_and_lesion()
    labels = torch.ones(3, 1, dtype=torch.long)
    emb = seeded_tiny_model.image_encoder(image).expand(3, -1, -1, -1, -1)
    sparse, _ = seeded_tiny_model.prompt_encoder(points=(clicks, labels), boxes=None, masks=None)
    router = ExpertRouter(seeded_tiny_model.config.prompt_embed_dim, hidden_dim=8, robust_texture=True).eval()
    features = routing_features(
        emb, sparse, clicks, labels, seeded_tiny_model.img_size, image, *router.layout
    )
    assert features.shape[1] == routing_feature_count(
        seeded_tiny_model.config.prompt_embed_dim, *router.layout
    )
    assert router.norm.normalized_shape[0] == features.shape[1]
    path = save_router(
        router, tmp_path / "r.safetensors", name="a", classes={"a": 1}, backbone=seeded_tiny_model, metrics={}
    )
    loaded = load_router_file(path, seeded_tiny_model, "a")
    assert loaded.robust_texture and loaded.layout == router.layout
    torch.testing.assert_close(loaded.probability(features), router.probability(features))
    # the gate: same layout on disk, and a gate file from before the option loads without it
    experts = {"lesion": copy.deepcopy(seeded_tiny_model.mask_decoder)}
    gate_moe = SamMoE(seeded_tiny_model, experts, gate_robust_texture=True).eval()
    assert gate_moe.reads_image
    gate_path = save_gate(gate_moe, tmp_path / "gate.safetensors")
    other = SamMoE(seeded_tiny_model, experts).eval()
    load_gate(other, gate_path)
    assert other.gate.robust_texture
    mask = torch.zeros(3, 1, 16, 16, 16)
    torch.testing.assert_close(
        other.step(emb, clicks, labels, mask, image=image).probs,
        gate_moe.step(emb, clicks, labels, mask, image=image).probs,
    )
    with safe_open(str(gate_path), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(state, str(tmp_path / "bad.safetensors"), {**meta, "robust_texture": '"yes"'})
    with pytest.raises(CheckpointError, match="robust_texture must be true or false"):
        load_gate(other, tmp_path / "bad.safetensors")
    save_file(state, str(tmp_path / "bad.safetensors"), {**meta, "robust_texture": "false"})
    with pytest.raises(CheckpointError, match="gate weights do not match its metadata"):
        load_gate(other, tmp_path / "bad.safetensors")
