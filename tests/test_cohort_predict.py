"""`sammoe predict` over a cohort: mixed formats from prompts files, failures isolated, resumable after a
kill, and split over two DDP processes (gloo) with each case written once and the same label maps, voxel for
voxel."""

from __future__ import annotations

import csv
import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers.cohort import write_cohort

from sammoe.files import sha256_file

SAMMOE = [sys.executable, "-m", "sammoe"]


def _args(folders, out, *extra):
    return [
        "predict",
        "--config",
        "predict",
        "--data.images",
        str(folders["images"]),
        "--data.prompts",
        str(folders["prompts"]),
        "--data.out",
        str(out),
        "--model.checkpoint",
        "demo",
        *extra,
    ]


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def _direct(folders, case: str) -> np.ndarray:
    """The label map the Predictor makes for one case, as `sammoe segment --clicks` would."""
    from sammoe.data.clicks_file import read_clicks_file
    from sammoe.inference.predictor import Predictor, Target

    image = next(p for p in folders["images"].iterdir() if p.name.split(".")[0] == case)
    targets = [
        Target(t.points, t.labels, t.name, t.space)
        for t in read_clicks_file(folders["prompts"] / f"{case}.json")
    ]
    predictor = Predictor.load("demo")
    predictor.set_image(image)
    return predictor.predict(targets).labels


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four good scans (NIfTI, NRRD, MHA, DICOM), a corrupt one, one clicked outside, one without prompts."""
    root = tmp_path_factory.mktemp("cohort")
    folders = write_cohort(root, n_cases=4)
    (folders["images"] / "case_04.nii.gz").write_bytes(gzip.compress(b"not an image"))
    (folders["prompts"] / "case_04.json").write_text((folders["prompts"] / "case_00.json").read_text())
    good = folders["images"] / "case_00.nii.gz"
    (folders["images"] / "case_05.nii.gz").write_bytes(good.read_bytes())
    outside = {"space": "voxel", "targets": [{"name": "far", "points": [[500, 1, 1]], "labels": [1]}]}
    (folders["prompts"] / "case_05.json").write_text(json.dumps(outside))
    (folders["images"] / "case_06.nii.gz").write_bytes(good.read_bytes())
    return folders


def test_a_mixed_cohort_is_segmented_failures_reported_and_a_rerun_skips_what_is_complete(
    cohort, tmp_path, capsys
):
    from sammoe.cli.train import main

    out = tmp_path / "out"
    assert main(_args(cohort, out, "--data.labels", str(cohort["labels"]))) == 1  # some cases failed
    rows = _summary(out)
    assert {case: row["status"] for case, row in rows.items()} == {
        **{f"case_0{i}": "done" for i in range(4)},
        **{f"case_0{i}": "failed" for i in (4, 5, 6)},
    }
    assert "case_04.nii.gz" in rows["case_04"]["reason"]
    assert "case_05.json" in rows["case_05"]["reason"] and "outside" in rows["case_05"]["reason"]
    assert "no prompts file" in rows["case_06"]["reason"]
    for i in (4, 5, 6):
        assert not (out / f"case_0{i}.nii.gz").exists() and not (out / f"case_0{i}.report.json").exists()
    for i in range(4):
        report = json.loads((out / f"case_0{i}.report.json").read_text())
        assert report["complete"] and report["labels_sha256"] == sha256_file(out / f"case_0{i}.nii.gz")
        assert 0.0 < report["scores"][0]["dice"] <= 1.0
    assert np.array_equal(_labels(out / "case_01.nii.gz"), _direct(cohort, "case_01"))  # NRRD input
    assert np.array_equal(_labels(out / "case_03.nii.gz"), _direct(cohort, "case_03"))  # DICOM input
    with open(out / "scores.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8  # 4 cases x 2 targets
    printed = capsys.readouterr().out
    assert "[4/7]" in printed and "cases/min" in printed and "4 done, 0 skipped" in printed

    before = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in out.glob("case_*")}
    (out / "case_01.report.json").unlink()  # as if killed between the label map and its report
    (out / "case_02.nii.gz").write_bytes(b"truncated")  # a label map its report does not describe
    assert main(_args(cohort, out, "--data.labels", str(cohort["labels"]))) == 1
    rows = _summary(out)
    assert [rows[f"case_0{i}"]["status"] for i in range(4)] == ["skipped", "done", "done", "skipped"]
    assert rows["case_00"]["mean_dice"] != ""  # a skipped case keeps its scores in the summary
    after = {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in out.glob("case_*")}
    for name in ("case_00.nii.gz", "case_03.nii.gz", "case_00.report.json"):
        assert after[name] == before[name]  # untouched
    for name in ("case_01.nii.gz", "case_02.nii.gz"):
        assert after[name][1] == before[name][1]  # done again, the same bytes


@pytest.mark.slow  # new processes (about 25 s): `make test-processes`
def test_a_killed_run_resumes_and_finishes_only_the_missing_cases(tmp_path):
    folders = write_cohort(tmp_path / "data", n_cases=6, formats=(".nii.gz",))
    out = tmp_path / "out"
    command = SAMMOE + _args(folders, out, "--data.num_workers", "0")
    run = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("case_*.report.json")) and time.monotonic() < deadline and run.poll() is None:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = {p.name.split(".")[0] for p in out.glob("case_*.report.json")}
    assert 1 <= len(finished) < 6, "the run was not killed mid-way; make the cohort larger"
    first = {case: sha256_file(out / f"{case}.nii.gz") for case in finished}

    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = _summary(out)
    assert {c for c, r in rows.items() if r["status"] == "skipped"} == finished
    assert all(r["status"] in ("done", "skipped") for r in rows.values()) and len(rows) == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".case_")]  # no temp file left
    for case in finished:
        assert sha256_file(out / f"{case}.nii.gz") == first[case]
    for i in range(6):
        assert np.array_equal(_labels(out / f"case_0{i}.nii.gz"), _direct(folders, f"case_0{i}"))


@pytest.mark.slow  # three new processes (about 30 s): `make test-processes`
def test_two_ddp_processes_write_each_case_once_with_the_single_process_label_maps(tmp_path):
    folders = write_cohort(tmp_path / "data", n_cases=5)
    single, double = tmp_path / "single", tmp_path / "double"
    one = subprocess.run(
        SAMMOE + _args(folders, single), capture_output=True, encoding="utf-8", errors="replace", timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    extra = (
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        "ddp",
        "--model.threads",
        "1",
    )
    two = subprocess.run(
        SAMMOE + _args(folders, double, *extra),
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    logged = [
        json.loads(line)["case"]
        for rank in (0, 1)
        for line in (double / ".sammoe-predict" / f"rank-{rank}.jsonl").read_text().splitlines()
    ]
    assert sorted(logged) == [
        f"case_0{i}" for i in range(5)
    ]  # each case once: none padded in twice, none lost
    assert "rank 1 [" in two.stdout and "rank 0 [" in two.stdout
    assert {r["status"] for r in _summary(double).values()} == {"done"}
    for i in range(5):
        name = f"case_0{i}.nii.gz"
        assert np.array_equal(_labels(double / name), _labels(single / name))
