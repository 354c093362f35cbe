"""SamMoE routing, fusion, gate features and gate checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch

from sammoe.errors import CheckpointError
from sammoe.loading import load_gate, save_gate
from sammoe.model.gate import MaskSelector, gate_features, local_intensity_stats, local_texture_stats
from sammoe.model.moe import SamMoE
from sammoe.model.sam3d import SamMed3D


@pytest.fixture(scope="module")
def moe() -> SamMoE:
    torch.manual_seed(0)
    backbone = SamMed3D.from_preset("tiny").eval()
    experts = {}
    for i, name in enumerate(["nodules", "spinal_cord"]):
        decoder = copy.deepcopy(backbone.mask_decoder)
        with torch.no_grad():
            for param in decoder.parameters():
                param.add_(0.05 * (i + 1) * torch.randn_like(param))
        experts[name] = decoder
    return SamMoE(backbone, experts).eval()


@pytest.fixture(scope="module")
def inputs(moe):
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(3, 1, 64, 64, 64, generator=gen)
    points = torch.randint(0, 64, (3, 2, 3), generator=gen).float()
    labels = torch.tensor([[1, 0], [1, 1], [1, -1]])
    with torch.no_grad():
        emb = moe.encode(image)
    return emb, points, labels, torch.zeros(3, 1, 16, 16, 16), image


@torch.no_grad()
def test_forced_route_equals_that_decoder(moe, inputs):
    emb, points, labels, mask, image = inputs
    for k, decoder in enumerate(moe.decoders):
        out = moe.step(emb, points, labels, mask, route=k, image=image)
        ref, _ = moe.backbone.decode(emb, points, labels, mask, decoder=decoder)
        torch.testing.assert_close(out.logits, ref)
        assert out.route.tolist() == [k, k, k]


@torch.no_grad()
def test_mixed_routes_decode_each_sample_with_its_expert(moe, inputs):
    emb, points, labels, mask, image = inputs
    route = torch.tensor([2, 0, 1])
    out = moe.step(emb, points, labels, mask, route=route, image=image)
    for i, k in enumerate(route.tolist()):
        ref = moe.step(
            emb[i : i + 1],
            points[i : i + 1],
            labels[i : i + 1],
            mask[i : i + 1],
            route=k,
            image=image[i : i + 1],
        )
        torch.testing.assert_close(out.logits[i : i + 1], ref.logits, atol=1e-5, rtol=1e-5)


def test_threshold_selector_falls_back_to_foundation():
    selector = MaskSelector("threshold", tau=0.6)
    probs = torch.tensor([[0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.3, 0.6]])
    assert selector.route(probs).tolist() == [1, 0, 2]
    assert MaskSelector("top1").route(probs).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="selector mode 'best'"):
        MaskSelector("best")


@torch.no_grad()
def test_soft_fusion_is_probability_weighted(moe, inputs):
    emb, points, labels, mask, image = inputs
    moe.selector = MaskSelector("soft")
    try:
        out = moe.step(emb, points, labels, mask, image=image)
    finally:
        moe.selector = MaskSelector()
    expected = sum(
        out.probs[:, k].view(-1, 1, 1, 1, 1)
        * moe.step(emb, points, labels, mask, route=k, image=image).logits
        for k in range(3)
    )
    torch.testing.assert_close(out.logits, expected, atol=1e-5, rtol=1e-5)
    assert (out.route == -1).all()


def test_gate_features_ignore_padding_and_point_free_steps(moe, inputs):
    emb, points, labels, _, _ = inputs
    sparse, _ = moe.backbone.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    feats = gate_features(emb, sparse, points, labels, 64)
    assert feats.shape == (3, 3 * 48)
    # sample 2 has one real click: its features equal those of that click alone
    one = gate_features(emb[2:], sparse[2:, [0, 2]], points[2:, :1], labels[2:, :1], 64)
    torch.testing.assert_close(feats[2:], one)
    free = gate_features(emb, sparse[:, :0], None, None, 64)
    assert torch.equal(free[:, 48:], torch.zeros(3, 96))


def test_only_the_gate_trains(moe):
    moe.freeze_all_but_gate()
    trainable = {n for n, p in moe.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("gate.") for n in trainable)


def test_gate_round_trip_and_mismatch(moe, tmp_path):
    moe.selector = MaskSelector("threshold", tau=0.73)
    path = save_gate(moe, tmp_path / "gate.safetensors")
    moe.selector = MaskSelector()
    other = SamMoE(moe.backbone, dict(moe.experts))
    load_gate(other, path)
    assert other.selector.tau == pytest.approx(0.73)
    for key, value in moe.gate.state_dict().items():
        assert torch.equal(other.gate.state_dict()[key], value)
    fewer = SamMoE(moe.backbone, {"nodules": moe.experts["nodules"]})
    with pytest.raises(
        CheckpointError, match=r"trained over experts \['foundation', 'nodules', 'spinal_cord'\]"
    ):
        load_gate(fewer, path)
    with pytest.raises(CheckpointError, match="gate weights not found"):
        load_gate(other, tmp_path / "missing.safetensors")


def test_gate_reads_the_first_positive_click_only(moe, inputs):
    emb, _, _, _, _ = inputs
    first = torch.tensor([[[10.0, 20.0, 30.0]]]).repeat(3, 1, 1)
    later = torch.tensor([[[50.0, 5.0, 60.0], [33.0, 33.0, 1.0]]]).repeat(3, 1, 1)

    def feats(points, labels):
        sparse, _ = moe.backbone.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        return gate_features(emb, sparse, points, labels, 64)

    one = feats(first, torch.ones(3, 1, dtype=torch.long))
    # refinement clicks after it do not change the routing input
    more = feats(torch.cat([first, later], 1), torch.tensor([[1, 0, 1]] * 3))
    torch.testing.assert_close(more, one)
    # a negative click before it is skipped
    neg_first = feats(torch.cat([later[:, :1], first], 1), torch.tensor([[0, 1]] * 3))
    torch.testing.assert_close(neg_first, one)


def test_local_intensity_stats_read_the_cubes_around_the_first_positive_click():
    image = torch.zeros(2, 1, 16, 16, 16)
    image[:, 0, 4:7, 4:7, 4:7] = 2.0  # a 3^3 bright cube centred on (5, 5, 5)
    points = torch.tensor([[[12.0, 12.0, 12.0], [5.0, 5.0, 5.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[0, 1], [-1, -1]])  # sample 0: the negative click first; sample 1: padding only
    stats = local_intensity_stats(image, points, labels, radii=(1, 2))
    # radius 1: the 3^3 cube itself; radius 2: 27 bright voxels among 5^3
    p = 27 / 125
    expected = [2.0, 0.0, 2.0 * p, 2.0 * (p * (1 - p)) ** 0.5]
    torch.testing.assert_close(stats[0], torch.tensor(expected))
    assert torch.equal(stats[1], torch.zeros(4))  # no valid click: zeros
    # clipped at the crop's corner, and one image shared by several targets
    corner = local_intensity_stats(image[:1], torch.zeros(3, 1, 3), torch.ones(3, 1), radii=(1,))
    assert corner.shape == (3, 2) and torch.equal(corner, torch.zeros(3, 2))
    assert torch.equal(local_intensity_stats(image, None, None, radii=(1, 2)), torch.zeros(2, 4))


def test_texture_stats_see_a_texture_the_crop_normalisation_hides():
    """A coarse texture inside a noisy organ stands out against the crop's noise level; the statistics do not
    move with the intensity scale or offset, nor with a bright structure elsewhere in the crop."""
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 1, 32, 32, 32, generator=gen) * 0.1
    blocks = torch.randn(1, 1, 6, 6, 6, generator=gen).repeat_interleave(3, 2).repeat_interleave(3, 3)
    image[..., 16:28, 16:28, 16:28] += blocks.repeat_interleave(3, 4)[..., :12, :12, :12]
    clicks = torch.tensor([[[22.0, 22.0, 22.0]], [[6.0, 6.0, 6.0]]])  # the texture / plain organ
    labels = torch.ones(2, 1, dtype=torch.long)
    stats = local_texture_stats(image, clicks, labels, radii=(2, 4))
    assert stats.shape == (2, 4)
    assert (stats[0] > stats[1] + 1.0).all()  # > e times the plain organ's ratio on every feature
    torch.testing.assert_close(local_texture_stats(image * 7.0 + 3.0, clicks, labels, (2, 4)), stats)
    # a crop that also holds a bright slab: the texture ratio stays put
    slab = image.clone()
    slab[..., 30:, :, :] += 40.0  # away from both cubes
    torch.testing.assert_close(local_texture_stats(slab, clicks, labels, (2, 4)), stats, atol=0.05, rtol=0)
    assert torch.equal(local_texture_stats(image, None, None, (2,)), torch.zeros(1, 2))


def test_a_texture_gate_round_trips_and_old_files_load_without_it(moe, inputs, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    emb, points, labels, mask, image = inputs
    textured = SamMoE(moe.backbone, dict(moe.experts), gate_texture=True).eval()
    assert textured.gate.norm.normalized_shape[0] == moe.gate.norm.normalized_shape[0] + 8
    path = save_gate(textured, tmp_path / "texture.safetensors")
    loaded = SamMoE(moe.backbone, dict(moe.experts)).eval()
    load_gate(loaded, path)
    assert loaded.gate.texture
    torch.testing.assert_close(
        loaded.step(emb, points, labels, mask, image=image).gate_logits,
        textured.step(emb, points, labels, mask, image=image).gate_logits,
    )
    with pytest.raises(ValueError, match="give local_radii too"):
        SamMoE(moe.backbone, dict(moe.experts), gate_local_radii=(), gate_texture=True)
    # a gate written before the texture statistics existed has no key: it loads as a gate without them
    old = save_gate(moe, tmp_path / "old.safetensors")
    with safe_open(str(old), framework="pt") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k != "texture"}
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(state, str(old), meta)
    load_gate(loaded, old)
    assert not loaded.gate.texture
    for value, message in (('"yes"', "texture must be true or false"), ("true", "gate weights do not match")):
        save_file(state, str(tmp_path / "bad.safetensors"), {**meta, "texture": value})
        with pytest.raises(CheckpointError, match=message):
            load_gate(loaded, tmp_path / "bad.safetensors")


@torch.no_grad()
def test_a_local_gate_needs_the_crop_and_an_embedding_only_gate_does_not(moe, inputs, tmp_path):
    emb, points, labels, mask, image = inputs
    with pytest.raises(ValueError, match="pass the encoded crop as image="):
        moe.step(emb, points, labels, mask)
    assert moe.step(emb, None, None, mask, image=image).probs.shape == (3, 3)  # a point-free step
    plain = SamMoE(moe.backbone, dict(moe.experts), gate_local_radii=()).eval()
    assert plain.step(emb, points, labels, mask).probs.shape == (3, 3)
    # a gate file records its radii: loading it rebuilds the gate to match
    path = save_gate(plain, tmp_path / "plain.safetensors")
    local = SamMoE(moe.backbone, dict(moe.experts)).eval()
    load_gate(local, path)
    assert local.gate.local_radii == ()
    torch.testing.assert_close(
        local.step(emb, points, labels, mask).gate_logits, plain.step(emb, points, labels, mask).gate_logits
    )


def test_a_damaged_gate_file_is_one_clear_error(moe, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_gate(moe, tmp_path / "gate.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    other = SamMoE(moe.backbone, dict(moe.experts))
    save_file(state, str(tmp_path / "meta.safetensors"), {**meta, "local_radii": "[1, oops"})
    with pytest.raises(CheckpointError, match="meta.safetensors: unreadable gate metadata"):
        load_gate(other, tmp_path / "meta.safetensors")
    save_file(state, str(tmp_path / "radii.safetensors"), {**meta, "local_radii": "[1, 2]"})
    with pytest.raises(CheckpointError, match="radii.safetensors: gate weights do not match its metadata"):
        load_gate(other, tmp_path / "radii.safetensors")
    # metadata outside its valid range is refused before anything is built (hidden_dim 2e9 meant 1.2 TB)
    for key, value, message in (
        ("tau", "nan", "tau must be a probability"),
        ("tau", "5", "tau must be a probability"),
        ("hidden_dim", "2000000000", "out of range"),
        ("local_radii", "[1, -2]", "out of range"),
    ):
        save_file(state, str(tmp_path / "bad.safetensors"), {**meta, key: value})
        with pytest.raises(CheckpointError, match=message) as err:
            load_gate(other, tmp_path / "bad.safetensors")
        assert "\n" not in str(err.value)
    assert other.selector.tau == moe.selector.tau  # a refused file changes nothing


def test_threshold_selector_needs_the_argmax_and_tau():
    """An expert wins only as the argmax with probability >= tau: an expert at 0.3 never beats a foundation
    at 0.6 (the old rule with tau 0.2 sent it to the expert)."""
    from sammoe.model.gate import MaskSelector

    probs = torch.tensor([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.3, 0.35, 0.35], [0.1, 0.1, 0.8]])
    assert MaskSelector("threshold", 0.2).route(probs).tolist() == [0, 1, 1, 2]
    assert MaskSelector("threshold", 0.6).route(probs).tolist() == [0, 0, 0, 2]
    assert MaskSelector("top1").route(probs).tolist() == [0, 1, 1, 2]
    for bad in (float("nan"), 5.0, -0.1):
        with pytest.raises(ValueError, match="tau"):
            MaskSelector("threshold", bad)
