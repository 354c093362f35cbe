"""Every benchmark's --smoke mode runs, so that the benchmarks cannot rot unnoticed.

The smokes that run a model against the official one take 15-40 s each on 2 cores: they are `slow` (out of
`make test`, which must stay under 2 minutes); `make test-bench` runs them, and `.ci/run` calls it after the
quick suite.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMOKE_OF_A_MODEL = pytest.mark.slow


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("module", ["router", "gate"])
def test_router_train_smoke_times_both_runs_per_epoch(tmp_path, module):
    result = _load("router_train").main(["--smoke", "--module", module, "--json", str(tmp_path / "r.json")])
    assert len(result["uncached_epoch_s"]) == len(result["cached_epoch_s"]) == 2
    assert result["preset"] == "tiny" and result["crops_per_epoch"] == 8 and result["module"] == module
    assert result["speedup_after_first_epoch"] > 0 and (tmp_path / "r.json").is_file()


@SMOKE_OF_A_MODEL
def test_segment_smoke_times_the_command_and_the_clicks(capsys):
    _load("segment").main(["--smoke"])
    out = capsys.readouterr().out
    assert "10 targets, cached embedding" in out and "refinement, add_click end to end" in out


@SMOKE_OF_A_MODEL
def test_segment_smoke_compares_with_the_official_pipeline(capsys):
    _load("segment").main(["--smoke", "--modes", "official"])
    out = capsys.readouterr().out
    assert "sammoe vs the official pipeline" in out and "open + first click" in out
    assert out.count("goal: ") == 3


def test_dataloader_smoke_compares_both_pipelines(capsys):
    _load("dataloader").main(["--smoke"])
    out = capsys.readouterr().out
    assert "sammoe warm (cached)" in out and "torchio plain, later epoch" in out


@SMOKE_OF_A_MODEL
def test_train_step_smoke_runs_ours_and_the_official_loop(capfd):
    _load("train_step").main(["--smoke"])
    out = capfd.readouterr().out
    assert "failed" not in out
    assert "sft    ratio" in out and "gate   ratio" in out


def test_gpu_script_parses_and_calls_benchmarks_that_exist():
    import re
    import subprocess

    script = BENCHMARKS / "gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    called = set(re.findall(r"benchmarks/(\w+\.py)", script.read_text()))
    assert called == {"encoder.py", "segment.py", "train_step.py", "gpu_summary.py"}
    assert all((BENCHMARKS / name).is_file() for name in called)


@SMOKE_OF_A_MODEL
def test_encoder_smoke_compares_with_the_official_encoder(capfd):
    _load("encoder").main(["--smoke"])
    out = capfd.readouterr().out
    assert "vit_b_ori image encoder, 64^3" in out
    batch_line = next(line for line in out.splitlines() if line.split()[:1] == ["1"])
    assert "-" not in batch_line.split()[1]  # the official encoder ran too (its column is filled)
    assert float(batch_line.split()[6]) < 1e-4  # and both computed the same encoding (float32)


def test_gpu_summary_judges_the_goals_and_names_missing_sections(tmp_path):
    import json

    summary = _load("gpu_summary")
    batches = [
        {"batch": 1, "official_s": 0.02, "ours_s": 0.01, "speedup": 2.0},
        {
            "batch": 32,
            "official_s": 0.02,
            "ours_s": 0.0008,
            "compiled_s": 0.002,
            "speedup": 25.0,
            "speedup_compiled": 10.0,
        },
    ]
    (tmp_path / "encoder.json").write_text(json.dumps({"device": "GPU X", "batches": batches}))
    clicks = {"device": "GPU X", "first_click_ms": 90.0, "refinement_step_ms": 7.5, "add_click_ms": 20.0}
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    rows = {row[0]: row for row in summary.rows(tmp_path)}
    assert rows["encoder b32 eager (ms/volume)"][3:] == ("25.0x", ">= 20x met")
    assert rows["encoder b32 compiled (ms/volume)"][3:] == ("10.0x", ">= 20x NOT met")
    assert rows["encoder b1 eager (ms/volume)"][4] == ""  # the goal is stated at batch 32 only
    assert rows["refinement, decoder step (ms)"][4] == "<= 5 ms NOT met"
    assert rows["training steps"][3] == "missing"
    assert summary.table(tmp_path).startswith("device: GPU X\n")
