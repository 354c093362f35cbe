"""Experts' own routers (issue 12): the routing rule, calibration and threshold choice, the router file,
router training through the CLI, packaging and verifying a plugin with its router, and routing over whatever
is installed when no gate fits."""

from __future__ import annotations

import copy
import json
import math
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from sammoe.cli.train import main as lightning_main
from sammoe.errors import CheckpointError, ConfigError, PluginError
from sammoe.lit.router import choose_threshold, fit_temperature
from sammoe.loading import load_backbone, load_model
from sammoe.loading.router import load_router_file, router_metrics, save_router
from sammoe.model.moe import SamMoE
from sammoe.model.router import ExpertRouter, route_by_routers
from sammoe.model.sam3d import PRESETS, SamMed3D, backbone_fingerprint
from sammoe.plugins.discovery import PluginWarning, discover
from sammoe.plugins.testing import fake_expert
from sammoe.publish.package import package_expert
from sammoe.publish.verify import verify_expert


def _router(shipped_tiny_model, seed: int = 0, threshold: float = 0.5) -> ExpertRouter:
    torch.manual_seed(seed)
    router = ExpertRouter(shipped_tiny_model.config.prompt_embed_dim, hidden_dim=16).eval()
    router.threshold.fill_(threshold)
    return router


def test_the_most_probable_expert_at_or_above_its_own_threshold_wins():
    probs = torch.tensor([[0.90, 0.95], [0.30, 0.20], [0.60, 0.40], [0.55, 0.99]])
    thresholds = torch.tensor([0.5, 0.97])
    # row 0: expert 2 is more probable but below its own 0.97; row 3: both claim, the higher wins
    assert route_by_routers(probs, thresholds).tolist() == [1, 0, 1, 2]


def test_temperature_recovers_an_overconfident_scale_and_threshold_respects_false_claims():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, generator=gen) * 2
    targets = torch.bernoulli(torch.sigmoid(z), generator=gen)
    assert fit_temperature(3.0 * z, targets) == pytest.approx(3.0, rel=0.1)  # logits 3x too confident
    probs = torch.tensor([0.9, 0.8, 0.35, 0.3, 0.1, 0.6, 0.05])
    groups = ["task", "task", "task", "general", "general", "background", "background"]
    threshold, rates = choose_threshold(probs, groups, max_false_claims=0.0)
    assert threshold == pytest.approx(0.65)  # the lowest grid value above every negative's probability
    assert rates == {"recall": 2 / 3, "false_claims_general": 0.0, "false_claims_background": 0.0}
    threshold, rates = choose_threshold(probs, groups, max_false_claims=0.5)
    assert threshold == pytest.approx(0.15) and rates["recall"] == 1.0  # one claim in each group is allowed


def test_the_false_claim_limit_holds_for_each_general_class_not_only_for_all_of_them():
    # A lesion router's false claims fall on the liver its lesions live in: pooled over all general clicks,
    # 1 claimed liver of 8 general clicks fits a 20% budget; per class it is half of the livers.
    probs = torch.tensor([0.9, 0.8, 0.4, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.05])
    groups = ["task"] * 3 + ["general"] * 8 + ["background"]
    classes = ["lesion"] * 3 + ["liver"] * 2 + ["kidney"] * 6 + ["background"]
    pooled, rates = choose_threshold(probs, groups, max_false_claims=0.2)
    assert pooled == pytest.approx(0.15) and rates["recall"] == 1.0 and rates["false_claims_general"] == 0.125
    threshold, rates = choose_threshold(probs, groups, max_false_claims=0.2, classes=classes)
    assert threshold == pytest.approx(0.55)  # above the claimed liver's 0.5
    assert rates == {
        "recall": 2 / 3,
        "false_claims_general": 0.0,
        "false_claims_background": 0.0,
        "false_claims_general_worst": 0.0,
    }
    _, rates = choose_threshold(probs, groups, max_false_claims=0.2, grid=(0.3,), classes=classes)
    assert rates["false_claims_general_worst"] == 0.5 and rates["false_claims_general"] == 0.125


@torch.no_grad()
def test_a_moe_routed_by_routers_sends_each_click_to_the_claiming_expert(shipped_tiny_model):
    experts = {
        "a": copy.deepcopy(shipped_tiny_model.mask_decoder),
        "b": copy.deepcopy(shipped_tiny_model.mask_decoder),
    }
    moe = SamMoE(shipped_tiny_model, experts, gate_local_radii=()).eval()
    assert moe.routing == "gate" and not moe.reads_image
    routers = {"a": _router(shipped_tiny_model, 0), "b": _router(shipped_tiny_model, 1)}
    with pytest.raises(ValueError, match="do not match the experts"):
        moe.use_routers({"b": routers["b"], "a": routers["a"]})
    moe.use_routers(routers)
    assert moe.routing == "routers" and moe.reads_image
    image = torch.randn(2, 1, 64, 64, 64)
    emb = shipped_tiny_model.image_encoder(image)
    points = torch.tensor([[[32.0, 32.0, 32.0]], [[10.0, 40.0, 20.0]]])
    labels = torch.ones(2, 1, dtype=torch.long)
    mask = torch.zeros(2, 1, 16, 16, 16)
    with pytest.raises(ValueError, match="pass the encoded crop"):
        moe.step(emb, points, labels, mask)
    out = moe.step(emb, points, labels, mask, image=image)
    sparse, _ = shipped_tiny_model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    expected = moe.router_probs(emb, sparse, points, labels, image)
    torch.testing.assert_close(out.probs, expected)
    torch.testing.assert_close(out.probs[:, 0], 1 - out.probs[:, 1:].amax(1))
    for a_threshold, b_threshold, route in ((0.0, 1.0, [1, 1]), (1.0, 0.0, [2, 2]), (1.0, 1.0, [0, 0])):
        routers["a"].threshold.fill_(a_threshold)
        routers["b"].threshold.fill_(b_threshold)
        assert moe.step(emb, points, labels, mask, image=image).route.tolist() == route
    assert moe.step(emb, points, labels, mask, route=2, image=image).route.tolist() == [2, 2]


def test_router_file_round_trip_and_refusals(shipped_tiny_model, tmp_path):
    router = _router(shipped_tiny_model, threshold=0.7)
    router.temperature.fill_(1.8)
    path = save_router(
        router,
        tmp_path / "router.safetensors",
        name="a",
        classes={"a": 1},
        backbone=shipped_tiny_model,
        metrics={"recall": 0.9, "false_claims_general": 0.01, "false_claims_background": 0.0},
    )
    loaded = load_router_file(path, shipped_tiny_model, "a")
    assert float(loaded.threshold) == pytest.approx(0.7) and float(loaded.temperature) == pytest.approx(1.8)
    features = torch.randn(3, loaded.norm.normalized_shape[0])
    torch.testing.assert_close(loaded.probability(features), router.probability(features))
    assert router_metrics(path.read_bytes(), "x") == {
        "recall": 0.9,
        "false_claims_general": 0.01,
        "false_claims_background": 0.0,
    }
    with pytest.raises(CheckpointError, match="a router of expert 'a', not of 'b'"):
        load_router_file(path, shipped_tiny_model, "b")
    other = SamMed3D(PRESETS["tiny"])
    with pytest.raises(CheckpointError, match="trained on another backbone"):
        load_router_file(path, other, "a")
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    for change, message in (
        ({"temperature": torch.tensor(0.0)}, "temperature 0.0 or threshold"),
        ({"threshold": torch.tensor(3.0)}, "or threshold 3.0 out of range"),
        ({"norm.weight": torch.full_like(state["norm.weight"], math.nan)}, "NaN or infinite"),
    ):
        save_file({**state, **change}, str(tmp_path / "bad.safetensors"), meta)
        with pytest.raises(CheckpointError, match=message) as err:
            load_router_file(tmp_path / "bad.safetensors", shipped_tiny_model, "a")
        assert "\n" not in str(err.value)
    save_file(state, str(tmp_path / "bad.safetensors"), {**meta, "local_radii": "[1, 2]"})
    with pytest.raises(CheckpointError, match="router weights do not match its metadata"):
        load_router_file(tmp_path / "bad.safetensors", shipped_tiny_model, "a")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 40)
    with pytest.raises(CheckpointError, match="junk.safetensors: not a safetensors file"):
        load_router_file(tmp_path / "junk.safetensors", shipped_tiny_model, "a")
    with pytest.raises(CheckpointError, match="configs/router.yaml"):
        load_router_file(tmp_path / "missing.safetensors", shipped_tiny_model, "a")


# ----------------------------------------------------------------------------------------------- plugins
def _routed_expert(
    plugin_site_dir, tmp_path, shipped_tiny_model, name: str, threshold: float = 0.5, router=True
):
    """A fake installed expert with the tiny decoder and (optionally) a router of its own."""
    decoder = {k: v.clone() for k, v in shipped_tiny_model.mask_decoder.state_dict().items()}
    extra = {}
    if router:
        file = save_router(
            _router(shipped_tiny_model, threshold=threshold),
            tmp_path / f"{name}.safetensors",
            name=name,
            classes={name: 1},
            backbone=shipped_tiny_model,
            metrics={"recall": 0.8},
        )
        extra["router_payload"] = file.read_bytes()
    fake_expert(
        plugin_site_dir,
        name,
        payload=save(decoder),
        backbone={"fingerprint": backbone_fingerprint(shipped_tiny_model)},
        task={"classes": {name: 1}, "crop_size": [64, 64, 64]},
        **extra,
    )


def test_installed_routers_route_when_no_gate_fits_and_a_broken_one_disables_only_its_expert(
    plugin_site_dir, shipped_tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("SAMMOE_EXPERTS", "alpha,beta,gamma")  # not the example plugins of this environment
    _routed_expert(
        plugin_site_dir, tmp_path, shipped_tiny_model, "alpha", threshold=0.0
    )  # claims every click
    _routed_expert(plugin_site_dir, tmp_path, shipped_tiny_model, "beta")
    _routed_expert(plugin_site_dir, tmp_path, shipped_tiny_model, "gamma", router=False)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        model, info = load_model("seeded", preset="tiny", experts=None)
    assert "routing" not in info["model"]  # on another trunk every expert is skipped: nothing to route
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = load_model(_trunk_file(shipped_tiny_model, tmp_path), preset="tiny")
    assert info["model"]["routing"] == "routers"
    assert info["model"]["experts"] == ["alpha", "beta"]
    assert set(info["model"]["routers"]) == {"alpha", "beta"}
    disabled = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert any("gamma" in m and "ships no router" in m for m in disabled), disabled
    from sammoe.inference.predictor import Predictor, Target

    predictor = Predictor(model, info=info)
    image = np.random.default_rng(0).normal(size=(40, 40, 40)).astype(np.float32)
    predictor.set_image(image, np.diag([1.5, 1.5, 1.5, 1.0]))
    result = predictor.predict(Target([[20, 20, 20]], [1], "x")).targets[0]
    assert result.expert == "alpha" and result.routed_by == "routers"
    predictor.route = "beta"
    assert predictor.predict(Target([[20, 20, 20]], [1], "x")).targets[0].routed_by == "forced"


def _trunk_file(shipped_tiny_model, tmp_path):
    from sammoe.loading import save_backbone

    path = tmp_path / "trunk.safetensors"
    if not path.exists():
        save_backbone(shipped_tiny_model, path)
    return path


def test_a_corrupt_router_is_reported_by_discovery_users_and_verify(
    plugin_site_dir, shipped_tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv("SAMMOE_EXPERTS", "alpha")
    _routed_expert(plugin_site_dir, tmp_path, shipped_tiny_model, "alpha")
    record = next(r for r in discover() if r.name == "alpha")
    assert verify_expert(record).status == "ok"
    router_file = plugin_site_dir / "fake_expert_alpha" / "router.safetensors"
    router_file.write_bytes(router_file.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    record = next(r for r in discover() if r.name == "alpha")
    checked = verify_expert(record)
    assert checked.status == "broken" and "router" in checked.reason and "sha256" in checked.reason
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, info = load_model(_trunk_file(shipped_tiny_model, tmp_path), preset="tiny")
    assert isinstance(model, SamMed3D) and "routing" not in info["model"]  # the foundation alone
    assert any("alpha" in str(w.message) and "sha256" in str(w.message) for w in caught)


def test_package_bundles_the_router_with_its_measured_rates(shipped_tiny_model, tmp_path):
    export = tmp_path / "run" / "expert"
    export.mkdir(parents=True)
    save_file(
        {k: v.clone() for k, v in shipped_tiny_model.mask_decoder.state_dict().items()},
        str(export / "decoder.safetensors"),
    )
    (export / "decoder.json").write_text(
        json.dumps(
            {
                "preset": "tiny",
                "backbone_fingerprint": backbone_fingerprint(shipped_tiny_model),
                "task": {"classes": {"liver": 1}, "modality": "CT", "dataset": "phantom"},
            }
        )
    )
    metrics = {"recall": 0.93, "false_claims_general": 0.01, "false_claims_background": 0.0}
    save_router(
        _router(shipped_tiny_model),
        export / "router.safetensors",
        name="liver",
        classes={"liver": 1},
        backbone=shipped_tiny_model,
        metrics=metrics,
    )
    out = package_expert(export / "decoder.safetensors", "liver", tmp_path / "plugin")
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert manifest["router"]["path"] == "router.safetensors"
    assert {k: manifest["router"][k] for k in metrics} == metrics
    assert (out / "sammoe_expert_liver" / "router.safetensors").read_bytes() == (
        export / "router.safetensors"
    ).read_bytes()
    from sammoe.plugins.testing import pip_install_target

    pip_install_target([out], tmp_path / "installed")  # a real install ships the router with the decoder
    assert (tmp_path / "installed" / "sammoe_expert_liver" / "router.safetensors").is_file()
    save_router(
        _router(shipped_tiny_model),
        export / "wrong.safetensors",
        name="kidney",
        classes={"kidney": 2},
        backbone=shipped_tiny_model,
        metrics={},
    )
    with pytest.raises(PluginError, match="a router of expert 'kidney', not of 'liver'"):
        package_expert(
            export / "decoder.safetensors", "liver", tmp_path / "p2", router=export / "wrong.safetensors"
        )
    assert not (tmp_path / "p2").exists()


# ----------------------------------------------------------------------------------------------- training
def test_router_fit_through_the_cli_writes_a_calibrated_router(tmp_path, monkeypatch, capsys):
    from sammoe.data.phantoms import make_phantom_dataset

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sys, "argv", ["sammoe"])
    make_phantom_dataset(tmp_path / "ds", n_cases=4, n_test=0, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    run = tmp_path / "run"
    config = tmp_path / "router.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        seed_everything: 0
        trainer: {{accelerator: cpu, devices: 1, max_epochs: 2, logger: false, enable_progress_bar: false,
                   enable_model_summary: false, default_root_dir: {run},
                   callbacks: [{{class_path: lightning.pytorch.callbacks.ModelCheckpoint,
                                init_args: {{dirpath: {run}/checkpoints, save_last: true}}}}]}}
        model:
          class_path: RouterTraining
          init_args: {{name: spinal_cord, task: {{classes: {{spinal_cord: 5}}}}, hidden_dim: 16,
                       patch_radius: 7, one_cycle: true, general_weight: 2.0}}
        data:
          class_path: PhantomDataModule
          init_args: {{root: {tmp_path / "ds"}, n_cases: 4, n_test: 0, crop_size: 64, batch_size: 4,
                       val_fraction: 0.5, background_clicks: 1, classes: [spinal_cord],
                       general_classes: [liver, spleen]}}
        """)
    )
    # the expert's finetuning run already lives there (the overlays share the run directory): kept as it is
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("finetune")
    (run / "checkpoints" / "last.ckpt").write_text("finetune")
    assert lightning_main(["fit", "--config", str(config)]) == 0
    assert (run / "config.yaml").read_text() == "finetune"
    assert (run / "checkpoints" / "last.ckpt").read_text() == "finetune"
    assert "RouterTraining" in (run / "router_config.yaml").read_text()
    assert (run / "checkpoints" / "router-last.ckpt").is_file()
    report = json.loads((run / "val" / "router.json").read_text())
    assert report["clicks"] == {"task": 2, "general": 4, "background": 2}  # 2 val cases, each target once
    router = load_router_file(
        run / "expert" / "router.safetensors", load_backbone(None, "tiny"), "spinal_cord"
    )
    assert float(router.threshold) == pytest.approx(report["threshold"])
    assert router.patch_radius == 7  # the click CNN travels in the file
    assert float(router.temperature) == pytest.approx(report["temperature"])
    assert (
        router_metrics((run / "expert" / "router.safetensors").read_bytes(), "x")["recall"]
        == report["recall"]
    )
    # the overlay's classes are the positives; a router config without them is refused in one line
    config.write_text(config.read_text().replace("task: {classes: {spinal_cord: 5}}, ", ""))
    capsys.readouterr()
    assert lightning_main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "sammoe: error: router 'spinal_cord': model.init_args.task.classes names no class; add the expert's "
        "overlay (--config configs/experts/spinal_cord.yaml)"
    ]


def test_general_clicks_weigh_more_in_the_router_loss(monkeypatch):
    from sammoe.lit.router import RouterTraining

    module = RouterTraining("a", task={"classes": {"a": 1}}, hidden_dim=4, general_weight=3.0)
    module.router.eval()  # no dropout: the loss is a function of the features
    features = torch.randn(3, module.router.norm.normalized_shape[0])
    monkeypatch.setattr(module, "features", lambda batch: features)
    monkeypatch.setattr(module, "log", lambda *args, **kwargs: None)
    batch = {"class_name": ["a", "liver", "background"], "image": torch.zeros(3, 1, 2, 2, 2)}
    loss = module.training_step(batch, 0)
    each = torch.nn.functional.binary_cross_entropy_with_logits(
        module.router(features), torch.tensor([1.0, 0.0, 0.0]), reduction="none"
    )
    assert float(loss) == pytest.approx(float((each * torch.tensor([1.0, 3.0, 1.0])).mean()))
    with pytest.raises(ConfigError, match="general_weight must be positive"):
        RouterTraining("a", task={"classes": {"a": 1}}, general_weight=0.0)


def test_the_feature_cache_computes_each_crop_once_and_persists(tmp_path):
    from sammoe.lit.feature_cache import FeatureCache

    gen = torch.Generator().manual_seed(0)
    batch = {
        "image": torch.randn(3, 1, 8, 8, 8, generator=gen),
        "first_click": torch.tensor([[1, 2, 3], [4, 4, 4], [1, 2, 3]]),
        "start": torch.zeros(3, 3, dtype=torch.long),
        "dataset": ["d"] * 3,
        "case_id": ["a", "a", "b"],
        "class_name": ["liver", "liver", "background"],
    }
    calls = []

    def compute(rows):
        calls.append(rows)
        return batch["image"][rows].flatten(1)[:, :4] * 2

    cache = FeatureCache(tmp_path, ("fingerprint", (1, 2), True))
    first = cache.features(batch, compute)
    torch.testing.assert_close(first, batch["image"].flatten(1)[:, :4] * 2)
    assert cache.features(batch, compute).equal(first) and calls == [[0, 1, 2]]
    assert (cache.hits, cache.misses) == (3, 3)
    path = cache.flush()
    assert path is not None and cache.flush() is None  # nothing new: nothing written
    again = FeatureCache(tmp_path, ("fingerprint", (1, 2), True))
    assert again.features(batch, compute).equal(first) and calls == [[0, 1, 2]]
    assert FeatureCache(tmp_path, ("other trunk", (1, 2), True)).path != path  # another trunk: another file
    changed = {**batch, "image": batch["image"].clone()}
    changed["image"][1] += 1.0  # the same case, class and click on another image: recomputed
    again.features(changed, compute)
    assert calls[-1] == [1]
    path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="rebuilding the feature cache"):
        assert FeatureCache(tmp_path, ("fingerprint", (1, 2), True)).table == {}


@torch.no_grad()
def test_a_router_of_the_click_block_alone_trains_without_the_encoder(shipped_tiny_model):
    from sammoe.lit.feature_cache import trunk_features

    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 32, 32, 32, generator=gen)
    batch = {
        "image": image,
        "label": torch.zeros_like(image),
        "first_click": torch.tensor([[16] * 3, [9] * 3]),
    }
    block_only = ((), False, False, 7, False)
    expected = trunk_features(shipped_tiny_model, batch, [0, 1], block_only)
    blind = copy.deepcopy(shipped_tiny_model)
    blind.image_encoder = None  # any encoder call would fail
    features = trunk_features(blind, batch, [1], block_only)
    assert features.shape == (1, 15**3)
    torch.testing.assert_close(features, expected[1:])


def test_click_draws_make_training_crops_repeat(tmp_path):
    from sammoe.data.phantoms import make_phantom_dataset
    from sammoe.lit.phantom_data import PhantomDataModule

    make_phantom_dataset(tmp_path / "ds", n_cases=2, n_test=0, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    starts = {}  # where the liver crop of phantom_000 sits, over 20 draws
    for draws, classes in ((2, ["liver"]), (0, ["liver"]), (2, ["spleen", "liver"])):
        dm = PhantomDataModule(
            root=str(tmp_path / "ds"),
            n_cases=2,
            n_test=0,
            crop_size=64,
            val_fraction=0.0,
            classes=classes,
            click_draws=draws,
        )
        dm.setup("fit")
        dataset = dm.train_dataset()
        item = next(
            i
            for i, (case, ref) in enumerate(dataset.targets)
            if ref.name == "liver" and case.case_id.endswith("0")
        )
        torch.manual_seed(0)
        starts[draws, len(classes)] = {tuple(dataset[item]["start"].tolist()) for _ in range(20)}
    assert len(starts[2, 1]) == 2 and len(starts[0, 1]) > 10
    assert starts[2, 2] == starts[2, 1]  # the same target draws the same crops whatever else is trained


@torch.no_grad()
def test_installing_an_expert_changes_nothing_where_its_router_does_not_claim(shipped_tiny_model):
    """Routing composes: the routes and masks of clicks the new expert's router leaves alone stay the same."""
    gen = torch.Generator().manual_seed(3)
    first = copy.deepcopy(shipped_tiny_model.mask_decoder)
    for p in first.parameters():
        p.add_(torch.randn(p.shape, generator=gen) * 0.05)  # an expert that differs from the foundation
    before = SamMoE(shipped_tiny_model, {"a": first}).eval()
    before.use_routers({"a": _router(shipped_tiny_model, 0, threshold=0.5)})
    after = SamMoE(
        shipped_tiny_model, {"a": first, "b": copy.deepcopy(shipped_tiny_model.mask_decoder)}
    ).eval()
    after.use_routers(
        {"a": before.routers["a"], "b": _router(shipped_tiny_model, 1, threshold=1.0)}
    )  # b claims nothing
    image = torch.randn(6, 1, 64, 64, 64, generator=gen)
    emb = shipped_tiny_model.image_encoder(image)
    points = torch.randint(8, 56, (6, 1, 3), generator=gen).float()
    labels = torch.ones(6, 1, dtype=torch.long)
    mask = torch.zeros(6, 1, 16, 16, 16)
    old = before.step(emb, points, labels, mask, image=image)
    new = after.step(emb, points, labels, mask, image=image)
    assert set(old.route.tolist()) == {0, 1}  # some clicks go to the expert, some to the foundation
    assert new.route.tolist() == old.route.tolist()
    torch.testing.assert_close(new.logits, old.logits)


def test_routing_can_insist_on_one_mechanism(plugin_site_dir, shipped_tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMOE_EXPERTS", "alpha,beta")
    from sammoe.loading import save_gate

    _routed_expert(plugin_site_dir, tmp_path, shipped_tiny_model, "alpha")
    trunk = _trunk_file(shipped_tiny_model, tmp_path)
    gate = save_gate(
        SamMoE(shipped_tiny_model, {"alpha": copy.deepcopy(shipped_tiny_model.mask_decoder)}),
        tmp_path / "gate.safetensors",
    )
    model, info = load_model(trunk, preset="tiny", gate=gate)
    assert info["model"]["routing"] == "gate"  # a gate over exactly the installed experts routes
    model, info = load_model(trunk, preset="tiny", routing="routers")
    assert info["model"]["routing"] == "routers" and model.routing == "routers"
    for kwargs, message in (
        ({"routing": "routers", "gate": gate}, "--routing routers ignores the gate"),
        ({"routing": "gate"}, "--routing gate needs a gate trained over alpha: no gate given"),
        ({"routing": "both"}, "routing 'both' unknown; choose one of auto, gate, routers"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_model(trunk, preset="tiny", **kwargs)
    _routed_expert(plugin_site_dir, tmp_path, shipped_tiny_model, "beta", router=False)
    with pytest.warns(PluginWarning, match="beta"), pytest.raises(ConfigError, match="ships a usable router"):
        load_model(trunk, preset="tiny", experts=["beta"], routing="routers")


def test_gate_training_can_evaluate_the_experts_own_routers(shipped_tiny_model, tmp_path):
    """`sammoe test ... --model.init_args.routing=routers`: each expert's router (beside an exported decoder)
    routes, and there is no gate to fit."""
    from sammoe.lit.gate import GateTraining
    from sammoe.loading import save_backbone

    trunk = save_backbone(shipped_tiny_model, tmp_path / "trunk.safetensors")
    export = tmp_path / "expert"
    export.mkdir()
    save_file(
        {k: v.clone() for k, v in shipped_tiny_model.mask_decoder.state_dict().items()},
        str(export / "decoder.safetensors"),
    )
    (export / "decoder.json").write_text(
        json.dumps(
            {
                "preset": "tiny",
                "backbone_fingerprint": backbone_fingerprint(shipped_tiny_model),
                "task": {"classes": {"liver": 1}},
            }
        )
    )
    files = {"liver": str(export / "decoder.safetensors")}
    with pytest.raises(CheckpointError, match="router not found"):
        GateTraining(checkpoint=str(trunk), expert_files=files, routing="routers")
    save_router(
        _router(shipped_tiny_model, threshold=0.4),
        export / "router.safetensors",
        name="liver",
        classes={"liver": 1},
        backbone=shipped_tiny_model,
        metrics={},
    )
    module = GateTraining(checkpoint=str(trunk), expert_files=files, routing="routers")
    assert module.moe.routing == "routers" and float(module.moe.routers["liver"].threshold) == pytest.approx(
        0.4
    )
    assert not module._tuning()  # no tau to tune: the routers carry their own thresholds
    with pytest.raises(ConfigError, match="has no gate to fit"):
        module.on_fit_start()


def test_an_epoch_of_cached_crops_sends_keys_with_the_same_draws(tmp_path, monkeypatch):
    """Once every fixed draw has been cut and its features are cached, router and gate training read keys
    instead of crops: the items come without image and label, in the same draw order, and no case is read."""
    from sammoe.data.phantoms import make_phantom_dataset
    from sammoe.lit.feature_cache import crop_key
    from sammoe.lit.phantom_data import PhantomDataModule

    make_phantom_dataset(tmp_path / "ds", n_cases=2, n_test=0, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    common = dict(
        root=str(tmp_path / "ds"), n_cases=2, n_test=0, crop_size=64, val_fraction=0.0, click_draws=2
    )
    datasets = []
    for cache in (None, str(tmp_path / "cache")):
        dm = PhantomDataModule(**common, cache_dir=cache)
        dm.setup("fit")
        dataset = dm.train_dataset()
        torch.manual_seed(0)
        for _ in range(12):  # visit every item until each target's two draws have been cut
            for i in range(len(dataset)):
                dataset[i]
            if dataset.seen_keys() is not None:
                break
        datasets.append(dataset)
    # without an on-disk cache a read resamples with torchio, which draws from torch: never skipped
    assert datasets[0].seen_keys() is None
    dataset = datasets[1]
    keys = dataset.seen_keys()
    assert keys is not None and len(keys) == 2 * len(set(dataset._used.values()))

    def epoch():
        torch.manual_seed(1)
        return [dataset[i] for i in range(len(dataset))]

    full = epoch()
    dataset.serve_keys = True
    monkeypatch.setattr(dataset.cache, "load", lambda *a, **k: pytest.fail("a case was read"))
    light = epoch()
    for a, b in zip(full, light, strict=True):
        assert "image" not in b and "label" not in b
        assert b["feature_key"] == crop_key({k: [v] for k, v in a.items()}, 0)
        assert b["class_name"] == a["class_name"] and torch.equal(b["first_click"], a["first_click"])
