"""Bad inputs, round two: every file a command reads is an input (an image's data files, installed experts,
the weights a model name stands for), no untrained model without asking, and outputs written all or none."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sammoe import files
from sammoe.cli import main
from sammoe.errors import CheckpointError, DataError


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 20.0, size=(40, 30, 24)).astype(np.float32)
    path = tmp_path_factory.mktemp("img") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["segment", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("sammoe: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------- an image's data files are inputs


def _detached(tmp_path: Path, suffix: str) -> tuple[Path, list[Path]]:
    import SimpleITK as sitk

    array = np.random.default_rng(1).normal(100.0, 20.0, size=(24, 30, 40)).astype(np.float32)
    header = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(header), False)
    return header, [p for p in tmp_path.iterdir() if p != header]  # what SimpleITK wrote beside the header


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_an_output_over_the_data_file_of_a_detached_header_is_refused(tmp_path, capsys, suffix):
    header, found = _detached(tmp_path, suffix)
    assert len(found) == 1 and found[0].is_file(), found
    raw = found[0]
    before = raw.read_bytes()
    rc, _, err = run(
        capsys,
        *("--image", header, "--checkpoint", "demo", "--experts", "none", "--out", tmp_path / "seg.nii.gz"),
        *("--report", raw, "--overwrite", "--point", 20, 15, 12, "--quiet"),
    )
    assert rc == 2
    line = _one_error(err)
    assert "data file" in line and str(raw.name) in line, line
    assert raw.read_bytes() == before and not (tmp_path / "seg.nii.gz").exists()
    assert [p.resolve() for p in files.data_files(header)] == [found[0].resolve()]


def test_data_files_reads_lists_and_patterns_of_both_formats(tmp_path):
    (tmp_path / "a.mhd").write_text("ObjectType = Image\nNDims = 3\nElementDataFile = LIST\nx1.raw\nx2.raw\n")
    (tmp_path / "b.mhd").write_text("NDims = 3\nElementDataFile = s%02d.raw 1 3 1\n")
    (tmp_path / "c.mha").write_text("NDims = 3\nElementDataFile = LOCAL\n")
    (tmp_path / "d.nhdr").write_text("NRRD0004\n# data file: no.raw\ndatafile: s%03d.raw 4 2 -2\n")
    (tmp_path / "e.nhdr").write_text("NRRD0004\ntype: short\ndata file: LIST 2\nsub/y1.raw\ny2.raw\n")
    (tmp_path / "f.nrrd").write_bytes(b"NRRD0004\ntype: short\n\ndata file: binary.raw\n\x00\x01")
    (tmp_path / "g.nhdr").write_text(f"NRRD0004\ndata file: {tmp_path / 'abs.raw.gz'}\n")
    names = {
        p.name: [str(f.relative_to(tmp_path)) for f in files.data_files(p)]
        for p in sorted(tmp_path.iterdir())
        if p.is_file()
    }
    assert names == {
        "a.mhd": ["x1.raw", "x2.raw"],
        "b.mhd": ["s01.raw", "s02.raw", "s03.raw"],
        "c.mha": [],
        "d.nhdr": ["s004.raw", "s002.raw"],
        "e.nhdr": ["sub/y1.raw", "y2.raw"],
        "f.nrrd": [],
        "g.nhdr": ["abs.raw.gz"],
    }
    (tmp_path / "y2.raw").write_bytes(b"x")
    with pytest.raises(DataError, match=r"--png .*y2.raw: would replace the input --image's data file"):
        files.check_outputs({"--png": tmp_path / "y2.raw"}, {"--image": tmp_path / "e.nhdr"}, overwrite=True)


# ------------------------------------------------------------------------- a model's files are inputs


def test_an_output_over_an_installed_experts_files_is_refused(tmp_path, capsys, image, plugin_site_dir):
    from sammoe.plugins.testing import fake_expert

    module = fake_expert(plugin_site_dir, "fake", router_payload=b"router bytes")
    folder = plugin_site_dir / module
    for name in ("manifest.json", "decoder.safetensors", "router.safetensors", "__init__.py"):
        target = folder / name
        before = target.read_bytes()
        rc, _, err = run(
            capsys,
            *("--image", image, "--checkpoint", "demo", "--experts", "none", "--out", tmp_path / "s.nii.gz"),
            *("--report", target, "--overwrite", "--point", 20, 15, 12, "--quiet"),
        )
        assert rc == 2, (name, err)
        line = _one_error(err)
        assert "expert fake's" in line and "choose an output path outside the inputs" in line, line
        assert target.read_bytes() == before


def test_an_output_over_the_weights_a_model_name_stands_for_is_refused(tmp_path, capsys, image, monkeypatch):
    from sammoe import assets, hub

    demo, gate = tmp_path / "foundation.safetensors", tmp_path / "gate.safetensors"
    shutil.copy(assets.FOUNDATION_TINY, demo)
    shutil.copy(assets.GATE_TINY, gate)
    monkeypatch.setattr(assets, "FOUNDATION_TINY", demo)
    monkeypatch.setattr(assets, "GATE_TINY", gate)
    turbo = tmp_path / "cache" / "sam_med3d_turbo.pth"
    turbo.parent.mkdir()
    turbo.write_bytes(b"cached turbo weights")
    monkeypatch.setattr(hub, "cached", lambda name, verify=False: turbo if name == hub.TURBO else None)
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"targets": [{"name": "a", "points": [[20, 15, 12]]}]}))
    cases = [
        ("demo", demo, "--checkpoint demo"),
        ("demo", gate, "the demo gate"),
        ("turbo", turbo, "--checkpoint turbo"),
        (None, turbo, "--checkpoint turbo"),
        ("demo", clicks, "--clicks"),
    ]
    for checkpoint, target, named in cases:
        before = target.read_bytes()
        model = [] if checkpoint is None else ["--checkpoint", checkpoint]
        rc, _, err = run(
            capsys,
            *("--image", image, *model, "--experts", "none", "--out", tmp_path / "s.nii.gz"),
            *("--clicks", clicks, "--png", target, "--overwrite", "--quiet"),
        )
        assert rc == 2, (checkpoint, target, err)
        line = _one_error(err)
        assert named in line or "must end with .png" in line, line
        rc, _, err = run(
            capsys,
            *("--image", image, *model, "--experts", "none", "--out", tmp_path / "s.nii.gz"),
            *("--clicks", clicks, "--report", target, "--overwrite", "--quiet"),
        )
        assert rc == 2 and named in _one_error(err), (checkpoint, target, err)
        assert target.read_bytes() == before


# ------------------------------------------------------------------------- no untrained model by accident


def test_checkpoint_seeded_is_refused_and_a_file_of_that_name_is_dot_slash_seeded(
    tmp_path, capsys, image, monkeypatch, shipped_tiny_checkpoint, shipped_tiny_model
):
    import torch

    monkeypatch.chdir(tmp_path)
    torch.save(
        {"model_state_dict": shipped_tiny_model.state_dict()}, tmp_path / "seeded"
    )  # a .pth by content
    common = ("--image", image, "--experts", "none", "--point", 20, 15, 12, "--quiet")
    rc, _, err = run(capsys, *common, "--checkpoint", "seeded", "--out", tmp_path / "a.nii.gz")
    assert rc == 2
    assert _one_error(err) == (
        "sammoe: error: --checkpoint seeded is an untrained model for tests; choose turbo, demo or a weights "
        "file (./seeded for a file of that name)"
    )
    assert not (tmp_path / "a.nii.gz").exists()
    rc, _, err = run(capsys, *common, "--checkpoint", "./seeded", "--out", "b.nii.gz", "--report", "b.json")
    assert rc == 0, err
    rc, _, err = run(capsys, *common, "--checkpoint", shipped_tiny_checkpoint, "--out", "c.nii.gz")
    assert rc == 0, err
    same = np.asarray(nib.load("b.nii.gz").dataobj), np.asarray(nib.load("c.nii.gz").dataobj)
    assert np.array_equal(*same)  # the file's weights, not the seeded initialisation
    from sammoe.inference.predictor import Predictor

    with pytest.raises(CheckpointError, match="untrained model for tests"):
        Predictor.load("seeded", experts="none")


# ------------------------------------------------------------------------- all outputs or none


def test_a_failing_picture_leaves_no_output_and_no_temp_file(tmp_path, capsys, image, monkeypatch):
    import sammoe.inference.outputs as outputs

    def broken(seg, targets):
        raise ValueError("cannot draw a one-slice image")

    monkeypatch.setattr(outputs, "overlay_png", broken)
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run(
        capsys,
        *("--image", image, "--checkpoint", "demo", "--experts", "none", "--out", out / "seg.nii.gz"),
        *("--probabilities", out / "p.nii.gz", "--report", out / "r.json", "--png", out / "o.png"),
        *("--point", 20, 15, 12, "--quiet"),
    )
    assert rc == 2
    line = _one_error(err)
    assert "--png" in line and "cannot draw the picture" in line, line
    assert sorted(p.name for p in out.iterdir()) == []


def test_write_files_is_all_or_none(tmp_path):
    (tmp_path / "b.txt").write_text("old")

    def fails(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        files.write_files(
            [(tmp_path / "a.txt", b"a", ""), (tmp_path / "b.txt", fails, ""), (tmp_path / "c", b"", "")]
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.txt"]
    assert (tmp_path / "b.txt").read_text() == "old"
    files.write_files([(tmp_path / "a.txt", b"a", ""), (tmp_path / "b.txt", b"new", "")])
    assert (tmp_path / "a.txt").read_text() == "a" and (tmp_path / "b.txt").read_text() == "new"


def test_sigterm_while_writing_leaves_no_temp_file(tmp_path):
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from sammoe.files import write_file

        def writer(tmp):
            Path(tmp).write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("still running after SIGTERM")

        write_file({str(tmp_path / "out.nii")!r}, writer, suffix=".nii")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + 15, done.stderr
    assert "still running" not in done.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- sammoe fit: outputs vs inputs


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from sammoe.data.phantoms import make_phantom_dataset

    root = tmp_path_factory.mktemp("fit_phantoms") / "ds"
    make_phantom_dataset(root, n_cases=3, n_test=1, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    return root


def _fit_config(path: Path, run: Path, root: Path, checkpoint: str = "seeded", extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            seed_everything: 0
            trainer:
              accelerator: cpu
              devices: 1
              max_epochs: 1
              limit_train_batches: 1
              limit_val_batches: 0
              num_sanity_val_steps: 0
              enable_progress_bar: false
              enable_model_summary: false
              enable_checkpointing: false
              default_root_dir: {run}
              logger: false
            model:
              class_path: ExpertFinetune
              init_args:
                name: spinal_cord
                checkpoint: {checkpoint}
                task: {{classes: {{spinal_cord: 5}}, modality: CT, dataset: phantom}}
                num_iterations: 2
                click_counts: [1]
                nsd_tolerance_mm: null{extra}
            data:
              class_path: PhantomDataModule
              init_args:
                root: {root}
                cache_dir: {run.parent / "cache"}
                n_cases: 3
                n_test: 1
                crop_size: 64
                batch_size: 1
                val_fraction: 0.34
                classes: [spinal_cord, liver, kidney_left]
            """
        )
    )
    return path


@pytest.fixture
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setattr(sys, "argv", ["sammoe"])


def _fit(capsys, *argv) -> tuple[int, str]:
    rc = main(["fit", *map(str, argv)])
    return rc, capsys.readouterr().err


@pytest.mark.usefixtures("_offline")
def test_fit_refuses_to_save_its_config_over_the_config_it_was_started_from(tmp_path, capsys, phantoms):
    run = tmp_path / "run"
    config = _fit_config(run / "config.yaml", run, phantoms)
    before = config.read_text()
    rc, err = _fit(capsys, "--config", config)
    assert rc == 2
    line = _one_error(err)
    assert "config.yaml" in line and "would replace the input --config" in line, line
    assert config.read_text() == before and not (run / "expert").exists()


@pytest.mark.usefixtures("_offline")
def test_fit_refuses_to_export_over_its_checkpoint_or_its_dataset(
    tmp_path, capsys, phantoms, shipped_tiny_checkpoint
):
    weights = tmp_path / "start.safetensors"
    shutil.copy(shipped_tiny_checkpoint, weights)
    label = sorted((phantoms / "labelsTr").iterdir())[0]
    cases = [
        (weights, weights, "model.init_args.checkpoint"),
        (weights, label, "labelsTr"),
        (weights, phantoms / "dataset.json", "dataset.json"),
    ]
    for checkpoint, export, named in cases:
        before = export.read_bytes()
        run = tmp_path / f"run_{export.stem}"
        cfg = _fit_config(tmp_path / "c.yaml", run, phantoms, str(checkpoint))
        args = [
            "--config",
            cfg,
            "--model.init_args.export_path",
            export,
            "--model.init_args.trainable",
            "all",
        ]
        rc, err = _fit(capsys, *args)
        assert rc == 2, (export, err)
        line = _one_error(err)
        assert "model.init_args.export_path" in line and named in line, line
        assert export.read_bytes() == before and not (run / "model.safetensors").exists()
    # the run folder's own export over the starting weights (a finetuning restarted from its own output)
    run = tmp_path / "again"
    own = run / "expert" / "decoder.safetensors"
    own.parent.mkdir(parents=True)
    shutil.copy(shipped_tiny_checkpoint, own)
    rc, err = _fit(capsys, "--config", _fit_config(tmp_path / "d.yaml", run, phantoms, str(own)))
    assert rc == 2 and "the run folder's expert/decoder.safetensors" in _one_error(err), err


def test_gate_and_router_exports_are_checked_against_their_inputs(tmp_path):
    from sammoe.cli.train import check_run_outputs
    from sammoe.errors import SammoeError

    gate = tmp_path / "gate.safetensors"
    gate.write_bytes(b"a trained gate")
    decoder = tmp_path / "expert" / "decoder.safetensors"
    decoder.parent.mkdir()
    decoder.write_bytes(b"an expert")
    trainer = {"default_root_dir": str(tmp_path / "run"), "logger": False}
    gate_model = {"class_path": "sammoe.lit.GateTraining", "init_args": {"gate": str(gate)}}
    with pytest.raises(SammoeError, match=r"model.init_args.export_path .* model.init_args.gate"):
        check_run_outputs(
            {
                "trainer": trainer,
                "model": {**gate_model, "init_args": {"gate": str(gate), "export_path": str(gate)}},
            },
            "fit",
        )
    files_model = {
        "class_path": "sammoe.lit.GateTraining",
        "init_args": {"expert_files": {"a": str(decoder.with_name("gate.safetensors"))}},
    }  # an expert file named like the gate the run folder gets
    with pytest.raises(SammoeError, match="gate.safetensors: would replace the input model.init_args.expert"):
        check_run_outputs({"trainer": {"default_root_dir": str(decoder.parent)}, "model": files_model}, "fit")
    router = {"class_path": "sammoe.lit.RouterTraining", "init_args": {"export_path": str(decoder)}}
    wandb = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": str(tmp_path)}}
    check_run_outputs({"trainer": {"logger": wandb}, "model": router}, "fit")  # a router beside its decoder
    with pytest.raises(SammoeError, match="router_config.yaml"):
        check_run_outputs(
            {"trainer": {"logger": wandb}, "model": router, "config": [str(tmp_path / "router_config.yaml")]},
            "fit",
        )
    check_run_outputs({"trainer": trainer, "model": gate_model}, "fit")  # nothing replaced: no error
