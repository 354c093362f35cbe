"""`sammoe experts list | show | verify | package` on fake distributions with real tiny decoder weights."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save, save_file

from sammoe import cli
from sammoe.cli.experts import main
from sammoe.errors import PluginError
from sammoe.loading import backbone_source, load_expert_decoders, save_backbone, save_gate
from sammoe.model.sam3d import SamMed3D
from sammoe.model.sam3d import backbone_fingerprint as fingerprint
from sammoe.plugins.discovery import PluginWarning, discover
from sammoe.plugins.testing import FAKE_FINGERPRINT, fake_expert, pip_install_target
from sammoe.publish.package import package_expert
from sammoe.publish.verify import verify_expert

TASK = {"classes": {"liver": 3}, "modality": "CT", "dataset": "phantom-liver"}


@pytest.fixture
def decoder(tiny_model_and_fingerprint):
    return {k: v.clone() for k, v in tiny_model_and_fingerprint[0].mask_decoder.state_dict().items()}


def _expert(plugin_site_dir, name, state, fp, **overrides):
    overrides.setdefault("backbone", {"fingerprint": fp})
    fake_expert(plugin_site_dir, name, payload=save(state), **overrides)


def _cli(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------- list/show
def test_list_table_json_and_broken_reason(
    plugin_site_dir, tiny_model_and_fingerprint, decoder, capsys, monkeypatch
):
    _expert(plugin_site_dir, "liver", decoder, tiny_model_and_fingerprint[1])
    fake_expert(plugin_site_dir, "spleen", module_source="raise ImportError('needs scipy')\n")
    monkeypatch.setenv("SAMMOE_EXPERTS", "liver,spleen")
    code, out, _ = _cli(["experts", "list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "DISTRIBUTION",
        "KIND",
        "BACKBONE",
        "CLASSES",
        "FINETUNED",
        "ROUTER",
        "STATUS",
    ]
    assert lines[1].split() == [
        "liver",
        "1.0.0",
        "fake-expert-liver",
        "1.0.0",
        "decoder",
        "tiny",
        "liver=1",
        "no",
        "no",
        "ok",
    ]
    assert lines[2].split()[-1] == "broken"
    assert lines[3].startswith(
        "broken: expert 'spleen' (fake-expert-spleen 1.0.0): cannot import entry point"
    )

    code, out, _ = _cli(["experts", "list", "--json"], capsys)
    data = {item["name"]: item for item in json.loads(out)}
    assert data["liver"]["status"] == "ok"
    assert data["liver"]["manifest"]["backbone"]["fingerprint"] == tiny_model_and_fingerprint[1]
    assert data["spleen"]["manifest"] is None and "needs scipy" in data["spleen"]["reason"]


def test_list_when_nothing_is_selected(capsys, monkeypatch):
    monkeypatch.setenv("SAMMOE_EXPERTS", "none")
    assert _cli(["experts", "list"], capsys)[1].startswith("no expert plugins installed")
    assert _cli(["experts", "list", "--json"], capsys)[1].strip() == "[]"


def test_show_and_unknown_name(plugin_site_dir, tiny_model_and_fingerprint, decoder, capsys):
    _expert(plugin_site_dir, "liver", decoder, tiny_model_and_fingerprint[1])
    code, out, _ = _cli(["experts", "show", "liver"], capsys)
    assert code == 0
    assert "status:        ok" in out and '"preset": "tiny"' in out
    code, out, _ = _cli(["experts", "show", "liver", "--json"], capsys)
    assert json.loads(out)["weights_path"].endswith("decoder.safetensors")

    code, out, err = _cli(["experts", "show", "kidney"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(
        "sammoe: error: expert 'kidney' (not installed): no installed distribution provides it"
    )


def test_bad_arguments_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["package", "--name", "x"]) == 2
    assert "required" in capsys.readouterr().err
    assert main(["--help"]) == 0


# ----------------------------------------------------------------------------------------------- verify
def test_verify_ok(plugin_site_dir, tiny_model_and_fingerprint, decoder, capsys):
    _expert(plugin_site_dir, "liver", decoder, tiny_model_and_fingerprint[1])
    code, out, _ = _cli(["experts", "verify", "liver"], capsys)
    assert code == 0, out
    assert out.split()[:2] == ["liver", "ok"]


def _verify(name, **kwargs):
    (record,) = discover([name])
    return verify_expert(record, **kwargs)


def test_verify_backbone_mismatch_and_backbone_checkpoint(
    plugin_site_dir, tiny_model_and_fingerprint, decoder, tmp_path, capsys
):
    _expert(plugin_site_dir, "liver", decoder, FAKE_FINGERPRINT)
    record = _verify("liver")
    assert record.status == "incompatible"
    assert f"{backbone_source('tiny')} has {tiny_model_and_fingerprint[1][:12]}" in record.reason
    assert record.reason.endswith("pass --backbone with the checkpoint the expert was trained on")

    # the expert's backbone is a saved checkpoint: verify against it
    torch.manual_seed(1)
    other = SamMed3D.from_preset("tiny")
    backbone = save_backbone(other, tmp_path / "backbone.safetensors")
    _expert(plugin_site_dir, "spleen", decoder, fingerprint(other))
    code, out, _ = _cli(["experts", "verify", "spleen", "--backbone", str(backbone)], capsys)
    assert code == 0, out
    record = _verify("liver", backbone_checkpoint=backbone)
    assert "this checkpoint is not the backbone the expert was trained on" in record.reason

    code, out, err = _cli(["experts", "verify", "spleen", "--backbone", str(tmp_path / "nope.pth")], capsys)
    assert code == 2 and "checkpoint not found" in err


def test_verify_decoder_that_does_not_fit(plugin_site_dir, tiny_model_and_fingerprint, decoder):
    key = sorted(decoder)[0]
    del decoder[key]
    _expert(plugin_site_dir, "liver", decoder, tiny_model_and_fingerprint[1])
    record = _verify("liver")
    assert record.status == "broken"
    assert f"weights do not fit the tiny mask decoder: missing 1 key(s), first {key}" in record.reason

    wide = {
        k: torch.zeros(v.shape[0] + 1, *v.shape[1:])
        for k, v in tiny_model_and_fingerprint[0].mask_decoder.state_dict().items()
    }
    _expert(plugin_site_dir, "spleen", wide, tiny_model_and_fingerprint[1])
    assert "has shape" in _verify("spleen").reason


def test_verify_non_finite_forward(plugin_site_dir, tiny_model_and_fingerprint, decoder):
    decoder = {k: torch.full_like(v, float("nan")) for k, v in decoder.items()}
    _expert(plugin_site_dir, "liver", decoder, tiny_model_and_fingerprint[1])
    record = _verify("liver")
    assert record.status == "broken" and "holds NaN or infinite values" in record.reason


def test_verify_unknown_preset_and_passthrough(plugin_site_dir, tiny_model_and_fingerprint, decoder, capsys):
    _expert(
        plugin_site_dir,
        "liver",
        decoder,
        tiny_model_and_fingerprint[1],
        backbone={"preset": "vit_h", "fingerprint": tiny_model_and_fingerprint[1]},
    )
    record = _verify("liver")
    assert record.status == "incompatible" and "backbone preset 'vit_h' is unknown here" in record.reason
    fake_expert(plugin_site_dir, "spleen", weights={"sha256": "0" * 64})
    code, out, _ = _cli(["experts", "verify", "spleen", "liver"], capsys)
    assert code == 1
    assert "broken" in out and "incompatible" in out


# ----------------------------------------------------------------------------------------------- package
def _sidecar(path: Path, **meta):
    meta = {"preset": "tiny", "task": TASK, **meta}
    path.with_suffix(".json").write_text(json.dumps(meta))


def test_package_from_safetensors_and_sidecar(tmp_path, tiny_model_and_fingerprint, decoder, capsys):
    ckpt = tmp_path / "liver.safetensors"
    save_file({f"mask_decoder.{k}": v for k, v in decoder.items()}, str(ckpt))
    _sidecar(ckpt, provenance={"training_data": "phantom liver, 40 cases", "reported_dice": {"liver": 0.81}})
    out = tmp_path / "project"
    code, stdout, err = _cli(
        ["experts", "package", "--checkpoint", str(ckpt), "--name", "liver", "--out", str(out)], capsys
    )
    assert code == 0, err
    assert stdout.splitlines()[-1] == f"install it with: pip install {out}"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        ".gitignore",
        "README.md",
        "pyproject.toml",
        "sammoe_expert_liver/__init__.py",
        "sammoe_expert_liver/decoder.safetensors",
        "sammoe_expert_liver/manifest.json",
        "tests/test_expert.py",
    ]
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert manifest["backbone"] == {"preset": "tiny", "fingerprint": tiny_model_and_fingerprint[1]}
    assert manifest["task"]["crop_size"] == [64, 64, 64]
    assert manifest["provenance"]["finetuned"] is True
    assert manifest["provenance"]["reported_dice"] == {"liver": 0.81}
    weights = load_file(str(out / "sammoe_expert_liver" / "decoder.safetensors"))
    assert weights.keys() == decoder.keys() and all(torch.equal(weights[k], decoder[k]) for k in decoder)
    assert (
        '[project.entry-points."sammoe.experts"]\nliver = "sammoe_expert_liver:manifest"'
        in (out / "pyproject.toml").read_text()
    )


def test_package_from_lightning_checkpoint_uses_the_trunk(tmp_path, tiny_model_and_fingerprint, decoder):
    torch.manual_seed(5)
    trained_on = SamMed3D.from_preset("tiny")
    state = {f"model.{k}": v for k, v in trained_on.state_dict().items() if not k.startswith("mask_decoder.")}
    state.update({f"model.mask_decoder.{k}": v for k, v in decoder.items()})
    hparams = {"preset": "tiny", "task": TASK, "lr": 8e-5, "provenance": {"training_data": "phantom"}}
    ckpt = tmp_path / "epoch=3.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": hparams, "epoch": 3}, ckpt)
    out = package_expert(ckpt, "liver", tmp_path / "project", version="2.0.1")
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert manifest["version"] == "2.0.1"
    assert manifest["backbone"]["fingerprint"] == fingerprint(trained_on) != tiny_model_and_fingerprint[1]
    assert manifest["provenance"]["config"] == {"lr": 8e-5}
    assert "the trunk stored in epoch=3.ckpt" in (out / "README.md").read_text()


class _Pickled:
    pass


def _package_error(tmp_path, ckpt, name="liver", **kwargs):
    with pytest.raises(PluginError) as info:
        package_expert(ckpt, name, tmp_path / "out", **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_package_error_paths(tmp_path, decoder):
    ckpt = tmp_path / "d.safetensors"
    save_file(decoder, str(ckpt))
    assert "not found; pass the finetuned expert's" in _package_error(tmp_path, tmp_path / "none.ckpt")
    assert "sidecar" in _package_error(tmp_path, ckpt) and "d.json not found" in _package_error(
        tmp_path, ckpt
    )
    assert "expert name 'Liver' is invalid" in _package_error(tmp_path, ckpt, name="Liver")

    _sidecar(ckpt, task={"classes": {}})
    assert "metadata is invalid: task.classes" in _package_error(tmp_path, ckpt)
    ckpt.with_suffix(".json").write_text(json.dumps({"preset": "tiny"}))
    assert "metadata has no 'task' dict" in _package_error(tmp_path, ckpt)
    _sidecar(ckpt, preset="vit_h")
    assert "unknown preset 'vit_h'" in _package_error(tmp_path, ckpt)
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"preset": "tiny", "task": TASK}))
    (tmp_path / "out" / "keep.txt").mkdir(parents=True)
    assert "already exists and is not empty; choose a new --out" in _package_error(tmp_path, ckpt, meta=meta)
    assert (tmp_path / "out" / "keep.txt").exists()
    shutil.rmtree(tmp_path / "out")

    small = dict(decoder)
    small.pop(sorted(small)[-1])
    save_file(small, str(ckpt))
    assert "the decoder does not fit preset 'tiny': missing 1 key(s)" in _package_error(
        tmp_path, ckpt, meta=meta
    )

    two = tmp_path / "two.safetensors"
    save_file(
        {**{f"a.mask_decoder.{k}": v for k, v in decoder.items()}, "b.mask_decoder.x": torch.ones(1)},
        str(two),
    )
    assert "several decoders in one checkpoint" in _package_error(tmp_path, two, meta=meta)

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    assert "is not a readable safetensors file" in _package_error(tmp_path, bad, meta=meta)


def test_package_refuses_pickled_lightning_checkpoint(tmp_path, decoder):
    ckpt = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": decoder, "hyper_parameters": {"task": _Pickled()}}, ckpt)
    message = _package_error(tmp_path, ckpt)
    assert "cannot be loaded with weights_only=True" in message
    assert "save hyperparameters as plain JSON types" in message
    torch.save({"weights": decoder}, ckpt)
    assert "has no 'state_dict'" in _package_error(tmp_path, ckpt)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # over 10 s on 2 cores; `make test-all` runs it
def test_packaged_project_pip_installs_and_passes_its_own_tests(
    tmp_path, tiny_model_and_fingerprint, decoder
):
    ckpt = tmp_path / "liver.safetensors"
    save_file(decoder, str(ckpt))
    _sidecar(ckpt)
    project = package_expert(ckpt, "liver_e2e", tmp_path / "project")
    target = tmp_path / "installed"
    pip_install_target([project], target)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(target), *sys.path]),
        "SAMMOE_EXPERTS": "liver_e2e",
    }
    env.pop("SAMMOE_BACKBONE", None)
    run = subprocess.run(
        [sys.executable, "-m", "sammoe", "experts", "verify", "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (record,) = json.loads(run.stdout)
    assert record["status"] == "ok" and record["distribution"] == "sammoe-expert-liver-e2e"
    assert record["weights_path"].startswith(str(target))
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests")],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


# ----------------------------------------------------------------------------------------------- loader
def test_load_expert_decoders_for_a_backbone(
    plugin_site_dir, tiny_model_and_fingerprint, decoder, monkeypatch
):
    model, fp = tiny_model_and_fingerprint
    shifted = {k: v + 1 for k, v in decoder.items()}
    _expert(plugin_site_dir, "liver", shifted, fp)
    _expert(plugin_site_dir, "spleen", decoder, FAKE_FINGERPRINT)  # trained on another backbone
    small = dict(decoder)
    small.pop(sorted(small)[0])
    _expert(plugin_site_dir, "kidney", small, fp)  # does not fit the decoder
    monkeypatch.setenv("SAMMOE_EXPERTS", "liver,spleen,kidney")
    with pytest.warns(PluginWarning) as caught:
        decoders = load_expert_decoders(model)
    assert list(decoders) == ["liver"]
    assert all(torch.equal(decoders["liver"].state_dict()[k], shifted[k]) for k in shifted)
    assert not any(p.requires_grad for p in decoders["liver"].parameters())
    assert model.mask_decoder.state_dict()[sorted(decoder)[0]].equal(decoder[sorted(decoder)[0]])
    messages = sorted(str(w.message) for w in caught)
    assert messages[0].startswith(
        "skipping broken plugin: expert 'kidney' (fake-expert-kidney 1.0.0): weights"
    )
    assert messages[1].startswith("skipping incompatible plugin: expert 'spleen'")

    assert list(load_expert_decoders(model, ["liver"])) == ["liver"]
    with pytest.raises(PluginError, match="^expert 'spleen' .*trained on backbone tiny ffffffffffff"):
        load_expert_decoders(model, ["liver", "spleen"])
    with pytest.raises(PluginError, match="^expert 'kidney' .*missing 1 key"):
        load_expert_decoders(model, ["kidney"])


def test_segment_skips_an_expert_whose_weights_do_not_load(
    plugin_site_dir, tiny_model_and_fingerprint, decoder, monkeypatch, tmp_path
):
    """`sammoe segment`'s loader goes through the same assembly: a plugin with unloadable weights is skipped
    with its reason, and the MoE of the others (with a gate over exactly them) still loads."""
    from sammoe.loading import load_model
    from sammoe.model.moe import SamMoE

    model, fp = tiny_model_and_fingerprint
    _expert(plugin_site_dir, "liver", {k: v + 1 for k, v in decoder.items()}, fp)
    _expert(
        plugin_site_dir, "kidney", {k: v.to(torch.int32) for k, v in decoder.items()}, fp
    )  # integer weights
    monkeypatch.setenv("SAMMOE_EXPERTS", "liver,kidney")
    ckpt = save_backbone(model, tmp_path / "tiny.safetensors")
    gate = save_gate(
        SamMoE(model, {"liver": copy.deepcopy(model.mask_decoder)}), tmp_path / "gate.safetensors"
    )
    with pytest.warns(PluginWarning, match="expert 'kidney' .*dtype torch.int32"):
        moe, info = load_model(ckpt, gate=gate)
    assert isinstance(moe, SamMoE) and info["model"]["experts"] == ["liver"]


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_package_a_real_lightning_checkpoint(tmp_path):
    """A checkpoint written by Lightning's Trainer (ModelCheckpoint) with plain-JSON hyperparameters."""
    import lightning as L

    class Finetune(L.LightningModule):
        def __init__(self, preset: str = "tiny", task: dict | None = None, lr: float = 8e-5) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = SamMed3D.from_preset(preset)
            self.model.image_encoder.requires_grad_(False)
            self.model.prompt_encoder.requires_grad_(False)

        def training_step(self, batch, _):
            (image,) = batch
            with torch.no_grad():
                emb = self.model.image_encoder(image)
            points, labels = torch.full((1, 1, 3), 32.0), torch.ones(1, 1, dtype=torch.long)
            logits, _ = self.model.decode(emb, points, labels, image.new_zeros(1, 1, 16, 16, 16))
            return logits.mean()

        def configure_optimizers(self):
            return torch.optim.AdamW(self.model.mask_decoder.parameters(), lr=self.hparams.lr)

    module = Finetune(task=TASK)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = torch.utils.data.TensorDataset(torch.randn(1, 1, 64, 64, 64))
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=1))
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    out = tmp_path / "liver"
    assert main(["package", "--checkpoint", str(ckpt), "--name", "liver", "--out", str(out)]) == 0
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert manifest["backbone"]["fingerprint"] == fingerprint(module.model)
    assert manifest["provenance"]["config"] == {"lr": 8e-5}
    weights = load_file(str(out / "sammoe_expert_liver" / "decoder.safetensors"))
    trained = module.model.mask_decoder.state_dict()
    assert all(torch.equal(weights[k], trained[k]) for k in trained)


def test_package_error_is_one_line_exit_2(tmp_path, capsys):
    argv = ["experts", "package", "--checkpoint", str(tmp_path / "x.ckpt"), "--name", "liver", "--out", "o"]
    code, out, err = _cli(argv, capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"sammoe: error: checkpoint {tmp_path / 'x.ckpt'} not found; "
        "pass the finetuned expert's .ckpt or .safetensors\n"
    )


def test_package_reads_the_finetune_modules_export(tmp_path):
    """The contract with sammoe.lit.finetune: its decoder export (+ sidecar) packages as is."""
    from sammoe.lit.finetune import ExpertFinetune

    module = ExpertFinetune(name="liver", preset="tiny", checkpoint="seeded", task=TASK)
    exported = module.export(tmp_path / "expert" / "decoder.safetensors")
    out = package_expert(exported, "liver", tmp_path / "project")
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert manifest["backbone"]["fingerprint"] == fingerprint(module.backbone)
    assert manifest["task"]["classes"] == TASK["classes"]
    assert manifest["provenance"]["finetuned"] is True


def test_package_prints_a_relative_out_dir_as_a_path(tmp_path, decoder, capsys, monkeypatch):
    ckpt = tmp_path / "liver.safetensors"
    save_file(decoder, str(ckpt))
    _sidecar(ckpt)
    monkeypatch.chdir(tmp_path)
    assert main(["package", "--checkpoint", str(ckpt), "--name", "liver", "--out", "proj"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "install it with: pip install ./proj"


def test_meta_overrides_keys_of_the_sidecar(tmp_path, decoder):
    ckpt = tmp_path / "liver.safetensors"
    save_file(decoder, str(ckpt))
    _sidecar(ckpt, backbone_fingerprint="a" * 64, provenance={"training_data": "phantoms", "notes": "kept"})
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"description": "overridden"}))
    out = package_expert(ckpt, "liver", tmp_path / "project", meta=meta)
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert manifest["description"] == "overridden"
    assert manifest["backbone"]["fingerprint"] == "a" * 64
    assert manifest["provenance"]["notes"] == "kept"


def test_package_never_runs_text_from_the_checkpoint(tmp_path, decoder):
    """A description that closes the docstring and calls os.system must stay data: importing the generated
    plugin and its test module runs none of it, and pyproject.toml reads it back as the same string."""
    import importlib.util

    tomllib = pytest.importorskip("tomllib")

    marker = tmp_path / "pwned"
    payload = f'"""\nimport pathlib; pathlib.Path({str(marker)!r}).write_text("x")\n"""'
    ckpt = tmp_path / "liver.safetensors"
    save_file(decoder, str(ckpt))
    _sidecar(ckpt, description=f"liver {payload} ''' {{name}} \\u2028")
    out = package_expert(ckpt, "liver", tmp_path / "project")
    for source in (out / "sammoe_expert_liver" / "__init__.py", out / "tests" / "test_expert.py"):
        assert "pathlib.Path(" not in source.read_text(), source
    spec = importlib.util.spec_from_file_location(
        "generated_plugin", out / "sammoe_expert_liver" / "__init__.py"
    )
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert not marker.exists()
    project = tomllib.loads((out / "pyproject.toml").read_text())["project"]
    manifest = json.loads((out / "sammoe_expert_liver" / "manifest.json").read_text())
    assert project["description"] == manifest["description"] and payload in manifest["description"]
