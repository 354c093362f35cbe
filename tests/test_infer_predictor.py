"""Predictor: click geometry (voxel / RAS / LPS on non-RAS anisotropic grids), alignment with the input grid,
multi-target batching, interactive refinement, MoE reports, model loading. CPU, tiny models, no assets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.dicom import write_dicom_series

from sammoe.data.io import Volume
from sammoe.errors import CheckpointError, ConfigError, DataError
from sammoe.inference.predictor import Predictor, Target, to_input_voxels
from sammoe.loading import load_backbone, load_model, save_backbone, save_gate
from sammoe.model.moe import SamMoE
from sammoe.model.sam3d import PRESETS, SamMed3D


class SphereModel(SamMed3D):
    """Tiny SamMed3D whose decoder 'segments' a ball of ``radius`` ROI voxels around the first click:
    a model with known output, so geometry can be checked exactly."""

    def __init__(self, radius: float = 6.0) -> None:
        super().__init__(PRESETS["tiny"])
        self.radius = radius
        self.calls: list[int] = []

    def decode(self, emb, points, labels, mask_prompt, decoder=None):
        self.calls.append(points.shape[0])
        low, size = self.low_res_size, self.img_size
        axis = (torch.arange(low, dtype=torch.float32) + 0.5) * (size / low) - 0.5
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
        dist = (grid[None] - points[:, 0].float()[:, None, None, None]).norm(dim=-1)
        return (self.radius - dist)[:, None], torch.ones(points.shape[0], 1)


def oblique_volume(shape=(40, 30, 24), seed=0) -> Volume:
    """A non-RAS (axes permuted and flipped), anisotropic volume with structure in it."""
    rng = np.random.default_rng(seed)
    affine = np.array(
        [
            [0.0, 0.0, -2.0, 40.0],  # array axis 2 -> L (flipped), 2 mm
            [-0.8, 0.0, 0.0, 15.0],  # array axis 0 -> P (flipped), 0.8 mm
            [0.0, 1.2, 0.0, -20.0],  # array axis 1 -> S, 1.2 mm
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    array = rng.normal(100.0, 20.0, size=shape).astype(np.float32)
    array[10:25, 8:20, 5:15] += 150.0
    return Volume(array=array, affine=affine)


def world(volume: Volume, vox) -> np.ndarray:
    vox = np.asarray(vox, dtype=np.float64)
    return volume.affine[:3, :3] @ vox + volume.affine[:3, 3]


def test_world_mm_and_voxel_clicks_agree_on_oblique_volume(shipped_tiny_model):
    vol = oblique_volume()
    vox = np.array([[17, 14, 9], [20, 12, 11]], dtype=np.float64)
    labels = [1, 0]
    ras = np.stack([world(vol, v) for v in vox])
    lps = ras * np.array([-1.0, -1.0, 1.0])
    assert np.allclose(to_input_voxels(vol, ras, "ras"), vox)
    assert np.allclose(to_input_voxels(vol, lps, "lps"), vox)
    pred = Predictor(shipped_tiny_model, "cpu")
    pred.set_image(vol)
    results = [
        pred.predict(Target(pts, labels, space=space), probabilities=True)
        for pts, space in ((vox, "voxel"), (ras, "ras"), (lps, "lps"))
    ]
    for res in results[1:]:
        assert np.array_equal(res.labels, results[0].labels)
        assert np.array_equal(res.probabilities, results[0].probabilities)
        assert res.targets[0].iou == results[0].targets[0].iou
    assert results[0].labels.shape == vol.shape


@pytest.mark.parametrize("space", ["voxel", "ras", "lps"])
def test_mask_lands_on_the_clicked_anatomy_voxel_for_voxel(space):
    vol = oblique_volume()
    model = SphereModel(radius=6.0)  # 6 ROI voxels = 9 mm at 1.5 mm
    pred = Predictor(model, "cpu", use_sliding_window=False)
    pred.set_image(vol)
    click = np.array([17.0, 14.0, 9.0])
    point = {"voxel": click, "ras": world(vol, click), "lps": world(vol, click) * [-1, -1, 1]}[space]
    seg = pred.predict(Target([point], space=space))
    mask = seg.labels == 1
    assert mask[tuple(click.astype(int))]
    idx = np.argwhere(np.ones(vol.shape, bool))
    dist = np.linalg.norm((idx @ vol.affine[:3, :3].T + vol.affine[:3, 3]) - world(vol, click), axis=1)
    dist = dist.reshape(vol.shape)
    # Inside the ball (minus resampling and voxel-size slack) is foreground, outside is background.
    assert mask[dist < 9.0 - 2.5].all()
    assert not mask[dist > 9.0 + 2.5].any()
    centroid = np.argwhere(mask).mean(0)
    assert np.linalg.norm(world(vol, centroid) - world(vol, click)) < 1.0


def test_multi_target_label_values_shared_roi_and_one_batch():
    vol = oblique_volume(shape=(80, 60, 50))
    model = SphereModel(radius=6.0)
    pred = Predictor(model, "cpu", use_sliding_window=False, share_roi=0.125)
    pred.set_image(vol)
    targets = [
        Target([[20, 15, 10]], name="a"),
        Target([[22, 17, 12]], name="b"),  # within share_roi of a: same ROI, same batch
        Target([[70, 50, 42]], name="c"),  # far away: its own ROI
    ]
    seg = pred.predict(targets)
    assert seg.encodes == 2
    assert [t.roi for t in seg.targets] == [0, 0, 1]
    assert model.calls == [2, 1]  # a and b decoded together
    assert set(np.unique(seg.labels)) == {0, 1, 2, 3}
    for t in seg.targets:
        assert t.voxels == int((seg.labels == t.value).sum()) > 0
        assert t.volume_ml == pytest.approx(t.voxels * 0.8 * 1.2 * 2.0 / 1000)
        assert seg.labels[t.click] == t.value or t.name == "a"  # b overlaps and overwrites a near its click
    report = seg.report()
    assert [r["name"] for r in report["targets"]] == ["a", "b", "c"]
    assert report["encodes"] == 2


def test_batched_targets_match_single_target_runs(shipped_tiny_model):
    vol = oblique_volume()
    a = Target([[17, 14, 9], [12, 10, 8]], [1, 1], "a")
    b = Target([[17, 14, 9], [20, 12, 11]], [1, 0], "b")
    pred = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)
    pred.set_image(vol)
    both = pred.predict([a, b], probabilities=True)
    assert both.encodes == 1
    for i, target in enumerate((a, b)):
        alone = pred.predict(target, probabilities=True)
        np.testing.assert_allclose(
            both.targets[i].probability, alone.targets[0].probability, atol=5e-5
        )  # uint16 steps


def test_refinement_reuses_embedding_and_matches_replay(shipped_tiny_model):
    vol = oblique_volume()
    clicks = [[17, 14, 9], [12, 10, 8], [20, 12, 11]]
    labels = [1, 1, 0]
    pred = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)
    pred.set_image(vol)
    full = pred.predict(Target(clicks, labels), probabilities=True).targets[0]
    first = pred.predict(Target(clicks[:1]), probabilities=True).targets[0]
    encodes = pred.encodes
    pred.add_click(0, clicks[1], positive=True)
    last = pred.add_click("target_1", world(vol, clicks[2]), positive=False, space="ras")
    assert pred.encodes == encodes  # no re-encoding
    voxels = last.voxels
    assert voxels == pred.segmentation.targets[0].voxels == int(full.mask.sum())
    assert last.clicks == 3 and first.clicks == 1
    np.testing.assert_allclose(last.probability, full.probability, atol=1e-6)
    assert np.array_equal(last.mask, full.mask)
    assert np.array_equal(pred.segmentation.labels == 1, full.mask)
    with pytest.raises(ConfigError, match="no target named"):
        pred.add_click("nope", clicks[0])


def test_refinement_click_outside_crop_is_refused():
    vol = oblique_volume(shape=(120, 60, 50))
    pred = Predictor(SphereModel(), "cpu", use_sliding_window=False)
    pred.set_image(vol)
    pred.predict(Target([[10, 30, 25]]))
    with pytest.raises(DataError, match="outside the target's 64\\^3 crop"):
        pred.add_click(0, [115, 30, 25])


def test_large_target_grows_over_windows():
    vol = oblique_volume(shape=(160, 40, 30))  # 128 mm long along array axis 0
    model = SphereModel(radius=40.0)  # a ball far larger than the 64^3 crop
    pred = Predictor(model, "cpu")
    pred.set_image(vol)
    grown = pred.predict(Target([[80, 20, 15]]), probabilities=True).targets[0]
    single = Predictor(model, "cpu", use_sliding_window=False)
    single.set_image(vol)
    one = single.predict(Target([[80, 20, 15]])).targets[0]
    assert grown.windows > 1 and one.windows == 1
    assert grown.voxels > one.voxels
    # probabilities over windows: blended as the mask is, so thresholding them gives the mask
    assert grown.probability.shape == vol.shape
    assert ((grown.probability > 0.5) == grown.mask).mean() > 0.999


def test_bad_clicks_raise_one_line_errors(shipped_tiny_model):
    vol = oblique_volume()
    pred = Predictor(shipped_tiny_model, "cpu")
    pred.set_image(vol)
    cases = [
        (Target([[40, 0, 0]]), "outside the image of shape 40x30x24"),
        (Target([world(vol, [-3, 0, 0])], space="ras"), "RAS mm .* outside the image"),
        (Target([[1, 2, 3]], space="xyz"), "unknown coordinate system 'xyz'"),
        (Target([]), "empty click list"),
        (Target([[1, 2]]), "3 coordinates"),
        (Target([[1, 2, 3]], [0]), "no positive click"),
        (Target([[1, 2, 3]], [1, 1]), "1 clicks but 2 labels"),
        (Target([[1, 2, 3]], [2]), "1 \\(positive\\) or 0"),
        (Target([[np.nan, 2, 3]]), "finite"),
        (Target([[int("9" * 400), 2, 3]]), "numbers .* within the image"),  # a 400-digit coordinate
    ]
    for target, message in cases:
        with pytest.raises(DataError, match=message) as info:
            pred.predict(target)
        assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="no targets"):
        pred.predict([])
    with pytest.raises(ConfigError, match="no image set"):
        Predictor(shipped_tiny_model, "cpu").predict(Target([[1, 2, 3]]))


def test_array_and_dicom_inputs(tmp_path, shipped_tiny_model):
    sitk = pytest.importorskip("SimpleITK")
    arr = oblique_volume().array[:, :, :12].astype(np.int16)
    image = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    image.SetSpacing((0.9, 1.1, 2.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    folder = write_dicom_series(tmp_path / "series", image)
    pred = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)
    vol = pred.set_image(folder)
    assert vol.shape == arr.shape
    from_dicom = pred.predict(Target([[20, 15, 6]]), probabilities=True)
    pred.set_image(vol.array, vol.affine)
    from_array = pred.predict(Target([[20, 15, 6]]), probabilities=True)
    assert np.array_equal(from_dicom.probabilities, from_array.probabilities)
    lps = np.array([-10.0 + 20 * 0.9, 5.0 + 15 * 1.1, 30.0 + 6 * 2.0])  # ITK physical point of that voxel
    pred.set_image(folder)
    from_lps = pred.predict(Target([lps], space="lps"), probabilities=True)
    assert np.array_equal(from_lps.probabilities, from_dicom.probabilities)
    with pytest.raises(DataError, match="3D"):
        pred.set_image(np.zeros((4, 4)))


def test_moe_reports_expert_and_gate(shipped_tiny_model):
    torch.manual_seed(1)
    backbone = load_backbone(None, "tiny")
    expert = SamMed3D(PRESETS["tiny"]).mask_decoder
    moe = SamMoE(backbone, {"liver": expert})
    pred = Predictor(moe, "cpu", use_sliding_window=False)
    pred.set_image(oblique_volume())
    seg = pred.predict([Target([[17, 14, 9]]), Target([[12, 10, 8]])])
    for t in seg.targets:
        assert t.expert in ("foundation", "liver")
        assert set(t.gate) == {"foundation", "liver"}
        assert sum(t.gate.values()) == pytest.approx(1.0, abs=1e-3)
    moe.selector.mode = "top1"
    forced = pred.predict(Target([[17, 14, 9]])).targets[0]
    assert forced.expert == max(forced.gate, key=forced.gate.get)


def test_a_target_is_routed_once_and_refinement_reuses_it(shipped_tiny_model, monkeypatch):
    """Routing reads only the first positive click, so refinement clicks reuse the first step's route and
    probabilities (the texture statistics cost more than a decoder pass) with the same masks as
    recomputing."""
    import sammoe.model.moe as moe_module

    torch.manual_seed(1)
    backbone = load_backbone(None, "tiny")
    moe = SamMoE(backbone, {"liver": SamMed3D(PRESETS["tiny"]).mask_decoder}, gate_robust_texture=True)
    calls = []
    original = moe_module.routing_features
    monkeypatch.setattr(moe_module, "routing_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    pred = Predictor(moe, "cpu", use_sliding_window=False)
    pred.set_image(oblique_volume())
    targets = [Target([[17, 14, 9], [12, 10, 8], [15, 12, 9]], [1, 0, 1]), Target([[12, 10, 8]])]
    seg = pred.predict(targets, probabilities=True)
    assert len(calls) == 2  # each target's first click (each has its own crop), none for the 2 refinements
    monkeypatch.setattr(pred._decoding, "routed", lambda group: (None, None))  # recompute at every click
    again = pred.predict(targets, probabilities=True)
    assert len(calls) == 2 + 4
    for a, b in zip(seg.targets, again.targets):
        assert a.expert == b.expert and a.gate == pytest.approx(b.gate)
        np.testing.assert_array_equal(a.probability, b.probability)
    np.testing.assert_array_equal(seg.labels, again.labels)
    monkeypatch.undo()
    pred.predict(Target([[17, 14, 9]]))
    other = "liver" if pred._states[0].route == 0 else "foundation"
    pred.route = other  # forced after the first click: the refinement follows it, not the old route
    assert pred.add_click(0, [15, 12, 9]).expert == other


def test_load_model_shipped_assets(tmp_path, monkeypatch):
    from sammoe import assets

    with pytest.raises(CheckpointError, match="sammoe weights fetch turbo.*--checkpoint demo"):
        load_model()  # nothing chosen, nothing cached: never the phantom model silently
    monkeypatch.setattr(assets, "FOUNDATION_TINY", tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="make foundation"):
        load_model("demo")
    ckpt = save_backbone(load_backbone(None, "tiny"), tmp_path / "foundation.safetensors")
    monkeypatch.setattr(assets, "FOUNDATION_TINY", ckpt)
    monkeypatch.setattr(assets, "GATE_TINY", tmp_path / "no_gate.safetensors")
    with pytest.warns(UserWarning) as caught:
        model, info = load_model("demo")
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("the demo model knows only") for m in messages)
    assert info["model"]["name"] == "demo" and info["model"]["warning"].startswith("the demo model")
    if _installed_experts():  # compatible experts but no gate (and the example routers are for the shipped
        # foundation, which this copy matches): routed by routers or the foundation alone, never silently
        assert isinstance(model, SamMoE) or any("foundation decoder only" in m for m in messages)
    assert info["model"]["preset"] == "tiny"
    with pytest.warns(UserWarning, match="demo model"):
        model, _ = load_model("demo", experts="none")
    assert isinstance(model, SamMed3D)


def test_load_model_checkpoint_errors(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"foo": torch.zeros(2)}, str(bad))
    with pytest.raises(CheckpointError, match="matches no SAM-Med3D preset"):
        load_model(bad, experts="none")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth", experts="none")
    ckpt = save_backbone(load_backbone(None, "tiny"), tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="pick the preset"):
        load_model(ckpt, preset="vit_b_ori", experts="none")


def test_load_model_with_installed_experts_and_gate(tmp_path):
    names = _installed_experts()
    if not names:
        pytest.skip("no expert plugins installed")
    backbone = load_backbone(None, "tiny")
    ckpt = save_backbone(backbone, tmp_path / "tiny.safetensors")
    # without a gate the experts' own routers route (the example plugins ship one); insisting on a gate fails
    model, info = load_model(ckpt, experts=names[:1])
    assert isinstance(model, SamMoE) and info["model"]["routing"] == "routers"
    with pytest.raises(ConfigError, match="--routing gate needs a gate"):
        load_model(ckpt, experts=names[:1], routing="gate")
    from sammoe.plugins.discovery import load_expert_weights, select_experts

    records = select_experts(names[:1])
    decoders = {}
    for r in records:
        dec = SamMed3D(PRESETS["tiny"]).mask_decoder
        dec.load_state_dict(load_expert_weights(r))
        decoders[r.name] = dec
    gate = save_gate(SamMoE(backbone, decoders), tmp_path / "gate.safetensors")
    model, info = load_model(ckpt, experts=names[:1], gate=gate)
    assert isinstance(model, SamMoE) and info["model"]["experts"] == names[:1]
    assert info["model"]["routing"] == "gate"


def _installed_experts() -> list[str]:
    from sammoe.model.sam3d import backbone_fingerprint
    from sammoe.plugins.discovery import discover

    fp = backbone_fingerprint(load_backbone(None, "tiny"))
    return [r.name for r in discover(backbone_fingerprint=fp) if r.ok]


def test_bf16_autocast_path_runs(shipped_tiny_model):
    """The GPU path (bf16 autocast) exercised on CPU autocast: dtypes flow through encode, decode, refinement,
    and the result is float32's up to bf16 rounding (different, so bf16 really ran, but close)."""
    for model in (
        shipped_tiny_model,
        SamMoE(shipped_tiny_model, {"x": SamMed3D(PRESETS["tiny"]).mask_decoder}),
    ):
        probabilities = {}
        for autocast in (False, True):
            pred = Predictor(model, "cpu", use_sliding_window=False)
            pred.autocast = autocast  # on CPU the constructor leaves it off
            pred.set_image(oblique_volume())
            seg = pred.predict(
                [Target([[17, 14, 9], [12, 10, 8]], [1, 0]), Target([[17, 14, 9]])], probabilities=True
            )
            assert seg.probabilities.shape == (40, 30, 24, 2) and seg.probabilities.dtype == np.float32
            probabilities[autocast] = seg.probabilities
        assert pred.add_click(1, [12, 10, 8], positive=False).clicks == 2
        assert not np.array_equal(probabilities[True], probabilities[False])
        assert np.abs(probabilities[True] - probabilities[False]).max() < 0.1


def test_forced_route_uses_the_named_decoder_through_the_same_path(shipped_tiny_model):
    """`route` sends every target to one decoder; the same clicks through the MoE with that expert forced give
    that expert's mask, and the gate's choice is still reported."""
    torch.manual_seed(3)
    experts = {"a": SamMed3D(PRESETS["tiny"]).mask_decoder, "b": SamMed3D(PRESETS["tiny"]).mask_decoder}
    moe = SamMoE(shipped_tiny_model, experts)
    clicks = Target([[17, 14, 9], [12, 10, 8]], [1, 0])
    results = {}
    for route in ("foundation", "a", "b"):
        pred = Predictor(moe, "cpu", use_sliding_window=False, route=route)
        pred.set_image(oblique_volume())
        t = pred.predict(clicks, probabilities=True).targets[0]
        assert t.expert == route and set(t.gate) == {"foundation", "a", "b"}
        results[route] = t.probability
    plain = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)
    plain.set_image(oblique_volume())
    alone = plain.predict(clicks, probabilities=True).targets[0].probability
    np.testing.assert_allclose(results["foundation"], alone, atol=1e-5)
    assert not np.allclose(results["a"], results["b"])
    pred = Predictor(moe, "cpu", use_sliding_window=False)
    pred.route = "b"  # switching routes keeps the cached embedding
    pred.set_image(oblique_volume())
    pred.predict(clicks)
    pred.route = "a"
    pred.predict(clicks, probabilities=True)
    assert pred.encodes == 1
    with pytest.raises(ConfigError, match="route 'nope' is not a loaded model"):
        pred.route = "nope"
    with pytest.raises(ConfigError, match="choose one of foundation"):
        Predictor(shipped_tiny_model, "cpu", route="a")


def test_a_target_may_choose_its_decoder_and_the_others_are_routed(shipped_tiny_model):
    """``Target.route`` decodes that target with the named decoder (its refinements too), through the same
    batch as the routed targets of its crop, equal to forcing that decoder for every target; an unknown
    name is one ConfigError naming the target and the loaded decoders."""
    torch.manual_seed(1)
    backbone = load_backbone(None, "tiny")
    moe = SamMoE(backbone, {"liver": SamMed3D(PRESETS["tiny"]).mask_decoder})
    pred = Predictor(moe, "cpu", use_sliding_window=False)
    pred.set_image(oblique_volume())
    routed = pred.predict(Target([[17, 14, 9]])).targets[0]
    other = "liver" if routed.expert == "foundation" else "foundation"
    chosen = Target([[17, 14, 9]], name="chosen", route=other)
    seg = pred.predict([Target([[17, 14, 9]], name="routed"), chosen], probabilities=True)
    assert seg.encodes == 1  # one crop for all three targets so far
    first, second = seg.targets
    assert (first.expert, first.routed_by) == (routed.expert, routed.routed_by)
    assert (second.expert, second.routed_by) == (other, "chosen")
    assert set(second.routing_probabilities) == {"foundation", "liver"}  # what the gate said, for the record
    pred.route = other
    forced = pred.predict(Target([[17, 14, 9]]), probabilities=True).targets[0]
    np.testing.assert_allclose(second.probability, forced.probability, atol=5e-5)
    pred.route = routed.expert  # forced for all: the target's own choice still wins
    again = pred.predict([chosen]).targets[0]
    assert again.expert == other and again.routed_by == "chosen"
    assert pred.add_click(0, [15, 12, 9]).expert == other
    with pytest.raises(
        ConfigError, match=r"target 'x': route 'lung' is not a loaded model; .*foundation, liver"
    ):
        pred.predict([Target([[17, 14, 9]]), Target([[12, 10, 8]], name="x", route="lung")])
    with pytest.raises(ConfigError, match="route 'lung'"):
        pred.add_target(Target([[12, 10, 8]], name="x", route="lung"))
