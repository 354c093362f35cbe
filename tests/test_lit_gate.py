"""GateTraining: only the gate learns toward the task expert, tau tuning, checkpoints, a short Trainer run.

Experts come from fake plugin records (monkeypatched discovery), so these tests do not depend on which
expert plugins are installed.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from safetensors import safe_open

from sammoe.errors import PluginError
from sammoe.eval.results import EvalRow
from sammoe.lit.gate import GateTraining
from sammoe.loading import save_gate
from sammoe.plugins import discovery

EXPERTS = {"spinal_cord": ["spinal_cord"], "nodules": ["nodules"]}


@pytest.fixture
def fake_experts(monkeypatch):
    """Two expert plugins on the seeded tiny backbone: the foundation decoder plus seeded noise."""
    from sammoe.loading import load_backbone

    base = load_backbone(None, "tiny").mask_decoder.state_dict()

    def select(names=None, *, backbone_fingerprint=None):
        chosen = list(EXPERTS) if names is None else list(names)
        unknown = [n for n in chosen if n not in EXPERTS]
        if unknown:
            raise PluginError(f"expert {unknown[0]!r} (not installed): no installed distribution provides it")
        return [
            SimpleNamespace(
                name=n, manifest=SimpleNamespace(task=SimpleNamespace(classes={c: 1 for c in EXPERTS[n]}))
            )
            for n in chosen
        ]

    def weights(record):
        gen = torch.Generator().manual_seed(len(record.name))
        return {
            k: v + 0.05 * v.std().nan_to_num() * torch.randn(v.shape, generator=gen) for k, v in base.items()
        }

    monkeypatch.setattr(discovery, "select_experts", select)
    monkeypatch.setattr(discovery, "load_expert_weights", weights)


def _batch(classes: list[str], size: int = 64) -> dict:
    gen = torch.Generator().manual_seed(1)
    bsz = len(classes)
    label = torch.zeros(bsz, 1, size, size, size)
    label[:, :, 24:40, 20:36, 28:44] = 1
    return {
        "image": torch.randn(bsz, 1, size, size, size, generator=gen),
        "label": label,
        "case_id": [f"case{i}" for i in range(bsz)],
        "class_name": classes,
    }


def test_gate_learns_alone_toward_the_task_expert(fake_experts):
    model = GateTraining(clicks_per_target=2, checkpoint=None, lr=1e-2)
    assert model.expert_names == ["foundation", "spinal_cord", "nodules"]
    assert model.oracle_expert("liver") == "foundation" and model.oracle_expert("nodules") == "nodules"
    assert model.class_group("spinal_cord") == "task" and model.class_group("spleen") == "general"
    batch = _batch(["liver", "spinal_cord", "nodules"])
    assert model.oracle_index(batch["class_name"], torch.device("cpu")).tolist() == [0, 1, 2]
    loss = model.training_step(batch, 0)
    assert math.isfinite(loss.item())
    loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("moe.gate.") for n in trainable)
    assert all(p.grad is not None for n, p in model.named_parameters() if n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    # the gate learns: a few steps lower the cross-entropy on a fixed batch
    opt = model.configure_optimizers()
    first = None
    for _ in range(5):
        opt.zero_grad()
        model._generator = torch.Generator().manual_seed(0)
        loss = model.training_step(batch, 0)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert loss.item() < first


def test_gate_training_reads_click_centred_features_from_the_cache(fake_experts, tmp_path, monkeypatch):
    """With a feature cache each click-centred crop is encoded once: the second step encodes nothing and
    gives the loss of a gate that computes every feature, and the cache is on disk after the epoch."""
    batch = {
        **_batch(["liver", "spinal_cord", "nodules", "background"]),
        "first_click": torch.tensor([[32, 28, 36], [30, 30, 30], [33, 29, 35], [5, 5, 5]]),
        "start": torch.zeros(4, 3, dtype=torch.long),
        "dataset": ["d"] * 4,
    }
    plain = GateTraining(checkpoint=None, gate_robust_texture=True)
    cached = GateTraining(checkpoint=None, gate_robust_texture=True, feature_cache=str(tmp_path / "cache"))
    cached.moe.gate.load_state_dict(plain.moe.gate.state_dict())
    plain.eval(), cached.eval()  # no dropout: the same gate gives the same loss
    encoded = []
    encoder = cached.moe.backbone.image_encoder
    monkeypatch.setattr(
        encoder, "forward", lambda image, _f=encoder.forward: encoded.append(len(image)) or _f(image)
    )
    reference = plain.training_step(batch, 0)
    first = cached.training_step(batch, 0)
    second = cached.training_step(batch, 0)
    assert encoded == [4]  # the second step read all four crops from the cache
    torch.testing.assert_close(first, reference)
    torch.testing.assert_close(second, reference)
    assert second.requires_grad  # the gate still learns from cached features
    monkeypatch.setattr(cached, "log", lambda *a, **k: None)
    monkeypatch.setattr(GateTraining, "trainer", SimpleNamespace(is_global_zero=True))
    cached.on_train_epoch_end()
    written = list((tmp_path / "cache").glob("features-*.safetensors"))
    assert len(written) == 1
    fresh = GateTraining(checkpoint=None, gate_robust_texture=True, feature_cache=str(tmp_path / "cache"))
    assert len(fresh.cache.table) == 4  # a new run starts from the file


def test_unknown_expert_is_a_plugin_error(fake_experts):
    with pytest.raises(PluginError, match="nope"):
        GateTraining(experts=["nope"])


def _rows(model: str, general: float, task: float) -> list[EvalRow]:
    return [
        EvalRow(model, f"c{i}", cls, grp, 1, value)
        for i in range(2)
        for cls, grp, value in (("liver", "general", general), ("spinal_cord", "task", task))
    ]


def test_tau_is_the_best_within_the_general_budget(fake_experts):
    model = GateTraining(tau_grid=[0.3, 0.5, 0.7], max_general_drop=0.01)
    rows = (
        _rows("foundation", 0.90, 0.20)
        + _rows("moe@0.3", 0.80, 0.80)  # best average but forgets
        + _rows("moe@0.5", 0.895, 0.70)  # within budget
        + _rows("moe@0.7", 0.90, 0.50)
    )
    tau, search = model.choose_tau(rows)
    assert tau == 0.5
    assert search["0.3"]["general_drop"] == pytest.approx(0.10)
    kept, extra = model.finalize_rows(rows, "val")
    assert model.moe.selector.tau == 0.5 and extra["tau"] == 0.5
    assert {r.model for r in kept} == {"foundation", "moe"}
    assert sorted(r.dice for r in kept if r.model == "moe") == [0.7, 0.7, 0.895, 0.895]
    # ties (the same routing at several thresholds): the middle of the best ones, not an end
    model.tau_grid = [0.2, 0.4, 0.5, 0.6, 0.8]
    tau, _ = model.choose_tau(
        _rows("foundation", 0.9, 0.2)
        + _rows("moe@0.2", 0.8, 0.9)
        + [r for t in ("0.4", "0.5", "0.6") for r in _rows(f"moe@{t}", 0.9, 0.8)]
        + _rows("moe@0.8", 0.9, 0.6)
    )
    assert tau == 0.5
    model.tau_grid = [0.3, 0.5, 0.7]
    # nothing within the budget: the threshold that forgets least
    model.hparams.max_general_drop = 0.0
    tau, _ = model.choose_tau(
        _rows("foundation", 0.9, 0.2) + _rows("moe@0.3", 0.5, 0.9) + _rows("moe@0.7", 0.8, 0.3)
    )
    assert tau == 0.7


def test_the_general_budget_holds_for_each_general_class_not_their_mean(fake_experts):
    model = GateTraining(tau_grid=[0.3, 0.7], max_general_drop=0.01)

    def rows(model_name: str, liver: float, task: float) -> list[EvalRow]:
        organs = (("liver", liver), ("kidney_left", 0.9), ("kidney_right", 0.9), ("spleen", 0.9))
        return [
            EvalRow(model_name, f"c{i}", cls, grp, 1, value)
            for i in range(2)
            for cls, grp, value in (*((c, "general", v) for c, v in organs), ("spinal_cord", "task", task))
        ]

    # 0.3 takes 3 Dice points off the liver (0.75 points averaged over the four general classes)
    tau, search = model.choose_tau(
        rows("foundation", 0.9, 0.2) + rows("moe@0.3", 0.87, 0.8) + rows("moe@0.7", 0.9, 0.7)
    )
    assert search["0.3"]["general_drop"] == pytest.approx(0.03)
    assert tau == 0.7


def test_checkpoint_keeps_the_tuned_tau_and_gate_file(fake_experts, tmp_path):
    model = GateTraining(tau=0.5)
    model.moe.selector.tau = 0.7
    ckpt: dict = {}
    model.on_save_checkpoint(ckpt)
    other = GateTraining(tau=0.5)
    other.on_load_checkpoint(ckpt)
    assert other.moe.selector.tau == 0.7
    path = save_gate(model.moe, tmp_path / "gate.safetensors")
    again = GateTraining(gate=str(path))
    assert again.moe.selector.tau == 0.7
    for key, value in model.moe.gate.state_dict().items():
        assert torch.equal(value, again.moe.gate.state_dict()[key])


class _Targets(torch.utils.data.Dataset):
    def __init__(self, classes: list[str]) -> None:
        self.classes = classes

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> dict:
        batch = _batch([self.classes[i]])
        batch["image"] = batch["image"] + i
        return {k: (v[0] if torch.is_tensor(v) else v[0]) for k, v in batch.items()}


def test_short_fit_writes_gate_and_report(fake_experts, tmp_path):
    classes = ["liver", "spinal_cord", "nodules"]
    loader = torch.utils.data.DataLoader(_Targets(classes), batch_size=3)
    val = torch.utils.data.DataLoader(_Targets(classes), batch_size=2)
    model = GateTraining(
        clicks_per_target=1,
        click_counts=[1, 2],
        tau_grid=[0.3, 0.6],
        overlay_images=False,
        nsd_tolerance_mm=None,
        gate_patch_radius=7,  # the click CNN trains, and its gate file says so
        one_cycle=True,
    )
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader, val)
    assert (tmp_path / "gate.safetensors").is_file()
    with safe_open(str(tmp_path / "gate.safetensors"), framework="pt") as handle:
        assert handle.metadata()["patch_radius"] == "7"
        assert any(key.startswith("patch_net.") for key in handle.keys())  # noqa: SIM118
    report = json.loads((tmp_path / "val" / "report.json").read_text())
    assert set(report["models"]) == {"foundation", "spinal_cord", "nodules", "moe", "oracle"}
    assert set(report["models"]["moe"]) == set(classes)
    assert report["tau"] in (0.3, 0.6) and set(report["tau_search"]) == {"0.3", "0.6"}
    # routing accuracy is the share of the MoE's rows whose route is the class's expert, recomputed by hand
    from sammoe.eval.report import read_rows_csv

    moe_rows = [r for r in read_rows_csv(tmp_path / "val" / "results.csv") if r.model == "moe"]
    expected = {"liver": "foundation", "spinal_cord": "spinal_cord", "nodules": "nodules"}
    assert moe_rows and all(r.oracle_expert == expected[r.class_name] for r in moe_rows)
    by_hand = sum(r.routed_expert == r.oracle_expert for r in moe_rows) / len(moe_rows)
    assert report["routing_accuracy"] == pytest.approx(by_hand)
    assert set(report["click_counts"]) == {1, 2}
    assert "foundation" not in report["forgetting"] and "moe" in report["forgetting"]
    # oracle routing of a general class is the foundation itself
    assert report["models"]["oracle"]["liver"] == report["models"]["foundation"]["liver"]
    assert report["models"]["oracle"]["nodules"] == report["models"]["nodules"]["nodules"]
    # the test stage evaluates the tuned MoE (no candidates)
    tuned = model.moe.selector.tau
    trainer.test(model, val)
    report = json.loads((tmp_path / "test" / "report.json").read_text())
    assert "moe" in report["models"] and report["tau"] == tuned and "tau_search" not in report
    # predict: one mask per target after the largest click count (ROI grid for crop batches)
    predictions = [item for batch in trainer.predict(model, val) for item in batch]
    assert [p["class_name"] for p in predictions] == classes
    assert all(p["mask"].shape == (64, 64, 64) and p["n_clicks"] == 2 for p in predictions)


def test_experts_from_finetuning_exports(tmp_path):
    from sammoe.errors import CheckpointError
    from sammoe.lit.finetune import ExpertFinetune

    files = {}
    for name, cls in (("cord", "spinal_cord"), ("nod", "nodules")):
        expert = ExpertFinetune(name=name, checkpoint="seeded", task={"classes": {cls: 1}})
        files[name] = str(expert.export(tmp_path / name / "decoder.safetensors"))
    model = GateTraining(checkpoint="seeded", expert_files=files)
    assert model.expert_names == ["foundation", "cord", "nod"]
    assert model.oracle_expert("nodules") == "nod" and model.oracle_expert("liver") == "foundation"
    with pytest.raises(CheckpointError, match="not found"):
        GateTraining(checkpoint="seeded", expert_files={"x": str(tmp_path / "missing.safetensors")})
    other = ExpertFinetune(name="far", checkpoint="seeded", task={"classes": {"x": 1}})
    with torch.no_grad():
        next(other.backbone.image_encoder.parameters()).add_(1.0)
    far = other.export(tmp_path / "far" / "decoder.safetensors")
    with pytest.raises(CheckpointError, match="another backbone"):
        GateTraining(checkpoint="seeded", expert_files={"far": str(far)})


def test_the_oracle_and_every_threshold_reuse_the_rollout_of_the_decoder_they_route_to(
    fake_experts, monkeypatch
):
    """Validation rolls out each decoder once per target: the oracle is the single model it names, and a
    threshold's MoE is the decoder its gate picks at the first click. The rows equal full rollouts of all."""
    import dataclasses

    from sammoe.interact.crop_evaluation import evaluate_batch

    model = GateTraining(tau_grid=[0.05, 0.34, 0.9], checkpoint=None).eval()  # as Lightning validates
    torch.manual_seed(0)
    with torch.no_grad():  # an untrained gate sends everything to the foundation: make it route somewhere
        for parameter in model.moe.gate.parameters():
            parameter.normal_(0.0, 0.1)
    monkeypatch.setattr(GateTraining, "_tuning", lambda self: True)
    batch = _batch(["spinal_cord", "liver", "nodules", "kidney_left"])
    embeddings = model.encode(batch["image"])
    models = model.eval_models(batch)
    calls = []
    step = model.moe.step
    monkeypatch.setattr(model.moe, "step", lambda *a, **k: calls.append(1) or step(*a, **k))

    def rows(chosen):
        calls.clear()
        out = evaluate_batch(
            chosen,
            embeddings,
            batch,
            click_counts=(1, 3),
            low_res_size=model.backbone.low_res_size,
            tolerance_mm=1.0,
            oracle_expert=model.oracle_expert,
        ).rows
        return [dataclasses.astuple(r) for r in out], len(calls)

    full, full_steps = rows([dataclasses.replace(m, same_as=None) for m in models])
    reused, reused_steps = rows(models)
    assert str(reused) == str(full)  # NaN-safe: the same rows, value for value
    # 3 decoders x 3 steps per target, plus a 1-step probe per threshold (of 7 models x 3 steps)
    assert reused_steps < full_steps * 0.85  # each decoder rolled out once, a 1-step probe per threshold
    routed = {r[7] for r in full if r[0].startswith("moe@")}
    assert len(routed) >= 2, f"the thresholds should route to different decoders, got {routed}"
