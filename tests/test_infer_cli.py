"""`sammoe segment`: outputs on the input grid, clicks files, reports, pictures, and one line per bad
input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sammoe.cli import main


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A small non-RAS anisotropic NIfTI."""
    rng = np.random.default_rng(0)
    affine = np.array(
        [[0.0, 0.0, -2.0, 40.0], [-0.8, 0.0, 0.0, 15.0], [0.0, 1.2, 0.0, -20.0], [0, 0, 0, 1.0]]
    )
    array = rng.normal(100.0, 20.0, size=(40, 30, 24)).astype(np.float32)
    path = tmp_path_factory.mktemp("img") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["segment", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_inline_clicks_write_label_map_on_the_input_grid(tmp_path, capsys, shipped_tiny_checkpoint, image):
    out = tmp_path / "seg.nii.gz"
    rc, stdout, err = run(
        capsys,
        *("--image", image, "--checkpoint", shipped_tiny_checkpoint, "--experts", "none", "--out", out),
        *("--point", 20, 15, 12, "--negative-point", 10, 5, 5, "--quiet"),
    )
    assert rc == 0, err
    src, seg = nib.load(str(image)), nib.load(str(out))
    assert seg.shape == src.shape
    assert np.allclose(seg.affine, src.affine)
    assert seg.get_data_dtype() == np.uint8
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    rc, _, err = run(
        capsys, "--image", image, "--checkpoint", shipped_tiny_checkpoint, "--out", out, "--point", 20, 15, 12
    )
    assert rc == 2 and "already exists" in err and "--overwrite" in err
    rc, _, err = run(
        capsys,
        "-i",
        image,
        "--checkpoint",
        shipped_tiny_checkpoint,
        "--experts",
        "none",
        "-o",
        out,
        "--overwrite",
        *("--point", 20, 15, 12, "--quiet"),
    )
    assert rc == 0, err  # -i / -o spell --image / --out


def test_clicks_file_multi_target_report_probabilities_png(tmp_path, capsys, shipped_tiny_checkpoint, image):
    affine = nib.load(str(image)).affine
    vox = np.array([[20, 15, 12], [10, 5, 5], [30, 25, 20]], dtype=float)
    ras = vox @ affine[:3, :3].T + affine[:3, 3]
    clicks = {
        "space": "ras",
        "targets": [
            {"name": "tumour", "points": ras[:2].tolist(), "labels": [1, 0]},
            {"name": "cyst", "points": ras[2:].tolist()},
        ],
    }
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    rc, stdout, err = run(
        capsys,
        *(
            "--image",
            image,
            "--checkpoint",
            shipped_tiny_checkpoint,
            "--experts",
            "none",
            "--clicks",
            tmp_path / "clicks.json",
        ),
        *(
            "--out",
            tmp_path / "seg.nii",
            "--report",
            tmp_path / "r.json",
            "--probabilities",
            tmp_path / "p.nii.gz",
        ),
        *("--png", tmp_path / "o.png", "--device", "cpu"),
    )
    assert rc == 0, err
    assert "tumour: label 1" in stdout and "cyst: label 2" in stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["tumour", "cyst"]
    assert [t["label"] for t in report["targets"]] == [1, 2]
    first = report["targets"][0]
    assert first["expert"] == "foundation" and first["clicks"] == 2
    assert {"stability", "voxels", "volume_ml", "routing_probabilities", "windows"} <= set(first)
    assert "gate" not in first and "predicted_iou" not in first and 0.0 <= first["stability"] <= 1.0
    labels = np.asarray(nib.load(str(tmp_path / "seg.nii")).dataobj)
    for t in report["targets"]:
        assert t["voxels"] == int((labels == t["label"]).sum())
        assert t["volume_ml"] == pytest.approx(t["voxels"] * 0.8 * 1.2 * 2.0 / 1000, abs=1e-3)
    probs = nib.load(str(tmp_path / "p.nii.gz"))
    assert probs.shape == (40, 30, 24, 2) and np.allclose(probs.affine, affine)
    data = np.asarray(probs.dataobj)
    assert data.dtype == np.float32 and data.min() >= 0.0 and data.max() <= 1.0
    assert (tmp_path / "o.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BAD = [
    (["--point", 40, 0, 0], "outside the image of shape 40x30x24"),
    (["--point", 1, 2, 3, "--space", "xyz"], "unknown coordinate system --space 'xyz'"),
    (["--negative-point", 1, 2, 3], "no positive click"),
    ([], "no positive click"),
    (["--point", 1, 2], "expected 3 argument"),
    (["--point", 1, 2, 3, "--share-roi", 2], "--share-roi"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_inline_input_one_line(tmp_path, capsys, shipped_tiny_checkpoint, image, args, message):
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--checkpoint",
        shipped_tiny_checkpoint,
        "--experts",
        "none",
        "--out",
        tmp_path / "s.nii.gz",
        *args,
    )
    assert rc == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("sammoe: error: ")
    assert not (tmp_path / "s.nii.gz").exists()


CLICK_FILES = [
    ({"space": "voxel", "targets": []}, "empty target list"),
    ({"space": "voxel", "targets": [{"points": []}]}, "empty click list"),
    ({"space": "ijk", "targets": [{"points": [[1, 2, 3]]}]}, "unknown coordinate system 'ijk'"),
    ({"targets": [{"points": [[1, 2, 3]], "labels": [1, 1]}]}, "1 clicks but 2 labels"),
    ({"targets": [{"points": [[1, 2, 3]], "colour": "red"}]}, "unknown keys ['colour']"),
    ({"targets": [{"name": "a", "points": [[1, 2, 3]]}, {"name": "a", "points": [[2, 2, 3]]}]}, "unique"),
    ({"space": "lps", "targets": [{"points": [[1000, 0, 0]]}]}, "LPS mm"),
    ([1, 2], "at the top level"),
    ("{not json", "not valid JSON"),
]


@pytest.mark.parametrize(("content", "message"), CLICK_FILES)
def test_bad_clicks_file_one_line(tmp_path, capsys, shipped_tiny_checkpoint, image, content, message):
    path = tmp_path / "clicks.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--checkpoint",
        shipped_tiny_checkpoint,
        "--experts",
        "none",
        "--out",
        tmp_path / "s.nii.gz",
        "--clicks",
        path,
    )
    assert rc == 2
    assert message in err
    assert err.count("\n") == 1


def test_bad_files_one_line(tmp_path, capsys, shipped_tiny_checkpoint, image):
    garbage = tmp_path / "broken.nii.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    import torch
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"image_encoder.patch_embed.proj.weight": torch.zeros(3)}, str(wrong))
    out = tmp_path / "s.nii.gz"
    cases = [
        (["--image", garbage, "--checkpoint", shipped_tiny_checkpoint], "cannot read NIfTI"),
        (["--image", tmp_path / "missing.nii.gz", "--checkpoint", shipped_tiny_checkpoint], "file not found"),
        (["--image", image, "--checkpoint", wrong], "matches no SAM-Med3D preset"),
        (["--image", image, "--checkpoint", tmp_path / "nope.pth"], "checkpoint not found"),
        (
            ["--image", image, "--checkpoint", shipped_tiny_checkpoint, "--preset", "vit_b_ori"],
            "pick the preset",
        ),
        (
            ["--image", image, "--checkpoint", shipped_tiny_checkpoint, "--clicks", tmp_path / "c.json"],
            "clicks file not found",
        ),
        (
            [
                "--image",
                image,
                "--checkpoint",
                shipped_tiny_checkpoint,
                "--clicks",
                tmp_path / "c.json",
                "--point",
                1,
                2,
                3,
            ],
            "not both",
        ),
        (["--image", image, "--checkpoint", shipped_tiny_checkpoint, "--device", "cuda:7"], "device"),
        (
            ["--image", image, "--checkpoint", shipped_tiny_checkpoint, "--device", "gpu"],
            "device 'gpu' is not available here",
        ),
    ]
    if not torch.backends.mps.is_available():
        cases.append(
            (
                ["--image", image, "--checkpoint", shipped_tiny_checkpoint, "--device", "mps"],
                "device 'mps' is not available",
            )
        )
    for args, message in cases:
        extra = [] if "--clicks" in args else ["--point", 20, 15, 12]
        rc, _, err = run(capsys, *args, "--experts", "none", "--out", out, *extra, "--quiet")
        assert rc == 2, (args, err)
        assert message in err, (message, err)
        assert err.count("\n") == 1, err
    for flag, value, message in [
        ("--out", tmp_path / "seg.png", "must end with .nii"),
        ("--out", image, "would replace the input --image"),
        ("--png", tmp_path / "x.jpg", "must end with .png"),
    ]:
        argv = [
            "--image",
            image,
            "--checkpoint",
            shipped_tiny_checkpoint,
            "--out",
            out,
            "--point",
            20,
            15,
            12,
            flag,
            value,
        ]
        rc, _, err = run(capsys, *argv)
        assert rc == 2 and message in err and err.count("\n") == 1, err


def test_missing_shipped_model_says_how_to_create_it(tmp_path, capsys, monkeypatch, image):
    from sammoe import assets

    monkeypatch.setattr(assets, "FOUNDATION_TINY", tmp_path / "foundation_tiny.safetensors")
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--out",
        tmp_path / "s.nii.gz",
        *("--point", 20, 15, 12),
        "--checkpoint",
        "demo",
    )
    assert rc == 2 and "make foundation" in err and err.count("\n") == 1


def test_no_model_chosen_is_refused_before_the_image_is_read(tmp_path, capsys, monkeypatch, image):
    from sammoe.data import io

    def must_not_read(*args, **kwargs):
        raise AssertionError("the image was read before the model was refused")

    monkeypatch.setattr(io, "read_image", must_not_read)
    out = tmp_path / "s.nii.gz"
    rc, _, err = run(capsys, "--image", image, "--out", out, "--point", 20, 15, 12)
    assert rc == 2 and err.count("\n") == 1 and not out.exists()
    assert "sammoe weights fetch turbo" in err and "--checkpoint demo" in err


def test_the_demo_model_says_so_on_stderr_and_in_the_report(tmp_path, capsys, image):
    report = tmp_path / "r.json"
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--out",
        tmp_path / "s.nii.gz",
        "--point",
        20,
        15,
        12,
        *("--checkpoint", "demo", "--experts", "none", "--report", report, "--quiet"),
    )
    assert rc == 0, err
    assert "warning: the demo model knows only sammoe's synthetic phantoms" in err
    model = json.loads(report.read_text())["model"]
    assert model["name"] == "demo" and model["warning"].startswith("the demo model knows only")


def test_help_and_dispatch(capsys):
    assert main(["segment", "--help"]) == 0
    assert "--negative-point" in capsys.readouterr().out
    assert main(["--help"]) == 0
    assert "segment" in capsys.readouterr().out


@pytest.mark.shared_data
def test_colin27_end_to_end(tmp_path, capsys, shipped_tiny_checkpoint, shared_dir):
    """The real MRI: a click at the left putamen's centroid (AAL 73, RAS mm) through the whole command."""
    ch2 = shared_dir / "data" / "colin27" / "ch2.nii.gz"
    rows = [line.split("\t") for line in (ch2.parent / "label_stats.tsv").read_text().splitlines()[1:]]
    centroid = next(r[5] for r in rows if r[0] == "aal" and r[1] == "73")
    point = [float(v) for v in centroid.split(",")]
    rc, stdout, err = run(
        capsys,
        *(
            "--image",
            ch2,
            "--checkpoint",
            shipped_tiny_checkpoint,
            "--experts",
            "none",
            "--point",
            *point,
            "--space",
            "ras",
        ),
        *("--out", tmp_path / "putamen.nii.gz", "--report", tmp_path / "r.json", "--png", tmp_path / "o.png"),
        "--no-sliding-window",
    )
    assert rc == 0, err
    src, seg = nib.load(str(ch2)), nib.load(str(tmp_path / "putamen.nii.gz"))
    assert seg.shape == src.shape == (181, 217, 181)
    assert np.allclose(seg.affine, src.affine)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["targets"][0]["voxels"] == int(np.asarray(seg.dataobj).sum())
    assert report["encodes"] == 1
    assert (tmp_path / "o.png").stat().st_size > 1000


@pytest.mark.shared_data
def test_colin27_geometry_with_known_model(shared_dir):
    """With a model that segments a 9 mm ball around the click, the mask sits on the putamen centroid."""
    ch2 = shared_dir / "data" / "colin27" / "ch2.nii.gz"
    import torch

    from sammoe.inference.predictor import Predictor, Target
    from sammoe.model.sam3d import PRESETS, SamMed3D

    class Ball(SamMed3D):
        def decode(self, emb, points, labels, mask_prompt, decoder=None):
            low, size = self.low_res_size, self.img_size
            axis = (torch.arange(low, dtype=torch.float32) + 0.5) * (size / low) - 0.5
            grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
            dist = (grid[None] - points[:, 0].float()[:, None, None, None]).norm(dim=-1)
            return (6.0 - dist)[:, None], torch.ones(points.shape[0], 1)

    pred = Predictor(Ball(PRESETS["tiny"]), "cpu")
    vol = pred.set_image(ch2)
    aal = np.asarray(nib.load(str(ch2.parent / "aal.nii.gz")).dataobj)
    seg = pred.predict(Target([[-24.9, 3.9, 2.4]], space="ras"))
    mask = seg.labels == 1
    centre = np.argwhere(mask).mean(0)
    # the click is snapped to the nearest voxel of the model's 1.5 mm grid (up to 0.75 mm per axis)
    assert np.linalg.norm(vol.affine[:3, :3] @ centre + vol.affine[:3, 3] - [-24.9, 3.9, 2.4]) < 1.5
    assert np.bincount(aal[mask]).argmax() == 73  # mostly left putamen (the rest: pallidum next to it)


def test_route_forces_one_decoder_and_names_it_in_the_report(tmp_path, capsys, image):
    """`--route` runs the shipped model with one decoder for every target (no gate needed for it), through the
    same code as the MoE; an unknown name is one line that lists the loaded ones."""
    from sammoe.loading import load_model
    from sammoe.model.moe import SamMoE

    model, _ = load_model("demo")
    if not isinstance(model, SamMoE):
        pytest.skip("the shipped model has no compatible installed experts")
    expert = model.expert_names[1]
    for route in ("foundation", expert):
        report = tmp_path / f"{route}.json"
        rc, _, err = run(
            capsys,
            "--image",
            image,
            "--out",
            tmp_path / f"{route}.nii.gz",
            "--report",
            report,
            *("--point", 20, 15, 12, "--route", route, "--quiet", "--checkpoint", "demo"),
        )
        assert rc == 0, err
        data = json.loads(report.read_text())
        assert data["route"] == route and data["targets"][0]["expert"] == route
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--out",
        tmp_path / "x.nii.gz",
        "--point",
        20,
        15,
        12,
        "--route",
        "nope",
        "--checkpoint",
        "demo",
    )
    assert rc == 2 and "route 'nope' is not a loaded model" in err and "foundation" in err
    assert len(err.strip().splitlines()) == 1


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, image, monkeypatch):
    from sammoe.inference import predictor as infer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer.Predictor, "predict", interrupted)
    out = tmp_path / "seg.nii.gz"
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--experts",
        "none",
        "--out",
        out,
        *("--point", 20, 15, 12),
        "--checkpoint",
        "demo",
    )
    assert rc == 130 and err.strip().splitlines()[-1:] == [
        "sammoe: interrupted; segment stopped, outputs are written only when complete"
    ]
    assert not any("Traceback" in line for line in err.splitlines())
    assert not out.exists()


def test_deeply_nested_clicks_json_is_one_line(tmp_path, capsys, image):
    clicks = tmp_path / "deep.json"
    clicks.write_text("[" * 100000 + "]" * 100000)
    rc, _, err = run(
        capsys, "--image", image, "--clicks", clicks, "--out", tmp_path / "s.nii.gz", "--experts", "none"
    )
    assert rc == 2 and "nested too deeply" in err and len(err.strip().splitlines()) == 1


def test_the_predicted_iou_is_the_models_estimate_clamped_and_the_report_shows_stability():
    from sammoe.inference.targets import TargetResult

    result = TargetResult("t", 1, np.zeros((2, 2, 2), bool), None, "foundation", None, -0.16, 1, 0, 1)
    assert result.predicted_iou == 0.0
    result.iou = 1.3
    assert result.predicted_iou == 1.0
    result.stability = 0.123456
    summary = result.summary()
    assert summary["stability"] == 0.1235 and "predicted_iou" not in summary  # the untrained head: not shown


def test_the_report_and_summary_line_say_what_routed_and_how_stable(tmp_path, capsys, image):
    """The demo model's experts route with their own routers: the report says so (``routed_by``) and files
    their probabilities under ``routing_probabilities``, not under ``gate``; the summary line shows the
    stability, not the untrained IoU head."""
    report = tmp_path / "r.json"
    rc, out, err = run(
        capsys,
        *("--image", image, "--out", tmp_path / "s.nii.gz", "--report", report, "--checkpoint", "demo"),
        *("--point", 20, 15, 12),
    )
    assert rc == 0, err
    (target,) = json.loads(report.read_text())["targets"]
    assert "gate" not in target and "predicted_iou" not in target
    if target["routed_by"] is not None:  # experts installed: the routers (the demo model's default) routed
        assert target["routed_by"] == "routers"
        assert set(target["routing_probabilities"]) >= {"foundation"}
    line = next(line for line in out.splitlines() if line.startswith("target_1: label 1"))
    assert f"stability {target['stability']:.2f}" in line and "IoU" not in line


def test_a_terminal_sees_what_the_command_is_doing(
    tmp_path, capsys, monkeypatch, image, shipped_tiny_checkpoint
):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    args = [
        "--image",
        image,
        "--checkpoint",
        shipped_tiny_checkpoint,
        "--experts",
        "none",
        *("--point", 20, 15, 12),
    ]
    rc, _, err = run(capsys, *args, "--out", tmp_path / "a.nii.gz")
    assert rc == 0 and "sammoe segment: reading" in err and "loading the model" in err
    rc, _, err = run(capsys, *args, "--out", tmp_path / "b.nii.gz", "--quiet")
    assert rc == 0 and "reading" not in err


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc")
def test_an_output_folder_that_refuses_files_is_refused_before_the_image_is_read(
    tmp_path, capsys, monkeypatch, image
):
    """/proc accepts no new file even from root (for whom os.access says yes): refused in one line before the
    image is read, and the other outputs are not written either."""
    from sammoe.data import io

    def must_not_read(*args, **kwargs):
        raise AssertionError("the image was read before the output folder was refused")

    monkeypatch.setattr(io, "read_image", must_not_read)
    report = tmp_path / "r.json"
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--out",
        "/proc/seg.nii.gz",
        "--report",
        report,
        "--point",
        20,
        15,
        12,
        *("--checkpoint", "demo", "--experts", "none", "--quiet"),
    )
    assert rc == 2 and err.count("\n") == 1, err
    assert err.startswith("sammoe: error: --out /proc/seg.nii.gz: cannot write in /proc (")
    assert err.endswith("; choose another folder\n")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_writing_is_one_line_and_leaves_no_output(
    tmp_path, capsys, monkeypatch, image, shipped_tiny_checkpoint
):
    """ENOSPC when the label map goes to disk (after inference): exit 2, one stderr line naming the file and
    the fix, the label map already there byte-identical, no report and no temp file left."""
    import errno

    from sammoe import files

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    out, report = tmp_path / "seg.nii.gz", tmp_path / "r.json"
    out.write_bytes(b"an earlier label map")
    monkeypatch.setattr(files.os, "fsync", no_space)
    rc, _, err = run(
        capsys,
        "--image",
        image,
        "--out",
        out,
        "--report",
        report,
        "--overwrite",
        "--point",
        20,
        15,
        12,
        *("--checkpoint", shipped_tiny_checkpoint, "--experts", "none", "--quiet"),
    )
    assert rc == 2 and err.count("\n") == 1, err
    assert err == (
        f"sammoe: error: cannot write {out}: no space left on the device (the existing file is unchanged); "
        "free some space or choose another folder\n"
    )
    assert out.read_bytes() == b"an earlier label map"
    assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


def test_the_summary_line_names_the_decoder_and_what_routed_it():
    """The foundation is not called an expert, and a router's vote is shown for the experts it is about."""
    from types import SimpleNamespace

    from sammoe.cli.segment import _decoder_phrase

    def target(expert, gate, routed_by="routers"):
        return SimpleNamespace(expert=expert, routing_probabilities=gate, routed_by=routed_by)

    phrase = _decoder_phrase(target("foundation", {"foundation": 1.0, "spinal_cord": 0.03, "lesion": 0.2}))
    assert phrase == "foundation decoder (no expert claimed it; highest router probability 0.20, lesion)"
    assert _decoder_phrase(target("lesion", {"foundation": 0.1, "lesion": 0.9}, "gate")) == (
        "expert lesion (gate probability 0.90)"
    )
    assert _decoder_phrase(target("foundation", None, None)) == "foundation decoder"
    assert _decoder_phrase(target("lesion", None, "forced")) == "decoder lesion (forced with --route)"


def test_no_model_chosen_is_refused_before_torch_is_imported(tmp_path):
    """Nothing chosen and nothing cached: one line at once, not after seconds of importing torch."""
    code = (
        "import sys; from sammoe.cli.main import main; "
        f"rc = main(['segment', '--image', {str(tmp_path / 'ct.nii.gz')!r}, '--point', '1', '2', '3', "
        f"'--out', {str(tmp_path / 'seg.nii.gz')!r}]); "
        "sys.exit(10 + rc if 'torch' not in sys.modules else 99)"
    )
    env = dict(os.environ, SAMMOE_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 12, done.stderr
    assert "no model chosen" in done.stderr


def test_a_clicks_file_target_chooses_its_decoder_and_the_others_are_routed(tmp_path, capsys, image):
    from sammoe.plugins.discovery import discover

    experts = [r.name for r in discover() if r.ok]
    if not experts:
        pytest.skip("no installed experts")
    clicks = tmp_path / "clicks.json"
    targets = [
        {"name": "a", "points": [[20, 15, 12]], "route": experts[0]},
        {"name": "b", "points": [[10, 5, 5]]},
    ]
    clicks.write_text(json.dumps({"targets": targets}))
    report = tmp_path / "r.json"
    rc, out, err = run(
        capsys,
        *("--image", image, "--clicks", clicks, "--out", tmp_path / "s.nii.gz", "--report", report),
        *("--checkpoint", "demo"),
    )
    assert rc == 0, err
    a, b = json.loads(report.read_text())["targets"]
    assert (a["expert"], a["routed_by"]) == (experts[0], "chosen")
    assert b["routed_by"] == "routers"
    assert "a: label 1" in out and f"decoder {experts[0]} (chosen in the clicks file)" in out


def test_an_unknown_route_in_a_clicks_file_is_one_line_before_torch_is_imported(tmp_path, image):
    clicks = tmp_path / "clicks.json"
    targets = [
        {"name": "a", "points": [[20, 15, 12]]},
        {"name": "cord", "points": [[1, 2, 3]], "route": "lung"},
    ]
    clicks.write_text(json.dumps({"targets": targets}))
    code = (
        "import sys; from sammoe.cli.main import main; "
        f"rc = main(['segment', '--image', {str(image)!r}, '--clicks', {str(clicks)!r}, "
        f"'--checkpoint', 'demo', '--out', {str(tmp_path / 'seg.nii.gz')!r}]); "
        "sys.exit(10 + rc if 'torch' not in sys.modules else 99)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 12, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert str(clicks) in line and "'cord'" in line and "'lung'" in line and "foundation" in line
    assert not (tmp_path / "seg.nii.gz").exists()


def test_a_log_gets_one_line_per_stage_on_stdout(tmp_path, image, shipped_tiny_checkpoint):
    """With stdout and stderr piped (a log, CI), each stage is one plain line on stdout as it happens, one per
    decoded target; stderr stays empty for warnings and errors."""
    clicks = tmp_path / "clicks.json"
    clicks.write_text(
        json.dumps({"targets": [{"name": "a", "points": [[20, 15, 12]]}, {"points": [[9, 5, 5]]}]})
    )
    out = tmp_path / "seg.nii.gz"
    argv = ["segment", "--image", image, "--clicks", clicks, "--out", out]
    argv += ["--checkpoint", shipped_tiny_checkpoint, "--experts", "none"]
    code = f"import sys; from sammoe.cli.main import main; sys.exit(main({[str(a) for a in argv]!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    stages = [line for line in done.stdout.splitlines() if line.startswith("sammoe segment: ")]
    assert stages == [
        f"sammoe segment: reading {image}",
        "sammoe segment: read 40x30x24 voxels; loading the model",
        "sammoe segment: model loaded on cpu; decoding 2 target(s)",
        "sammoe segment: decoded target 1/2 (a)",
        "sammoe segment: decoded target 2/2 (target_2)",
        f"sammoe segment: writing {out}",
    ]
    assert done.stdout.splitlines()[len(stages)].startswith("a: label 1")  # the results follow the stages


def test_a_refusal_after_the_first_stage_is_still_one_line_on_stderr(tmp_path, capsys, image, monkeypatch):
    """A click outside the image is refused once the image is read, before the model loads: one stderr line
    (the stage lines went to stdout)."""
    from sammoe.inference.predictor import Predictor

    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the clicks were checked against the image")

    monkeypatch.setattr(Predictor, "load", must_not_load)
    rc, out, err = run(
        capsys, "--image", image, "--out", tmp_path / "s.nii.gz", "--point", 40, 0, 0, "--checkpoint", "demo"
    )
    assert rc == 2 and err.count("\n") == 1 and "outside the image of shape 40x30x24" in err, err
    assert out.startswith("sammoe segment: reading") and not list(tmp_path.iterdir())
