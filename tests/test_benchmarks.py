"""Every benchmark's --smoke mode runs, so that the benchmarks cannot rot unnoticed; every header says
what ran where (benchmarks/machine.py), and the AVX2 mode really runs as an AVX2 CPU.

The smokes that run a model against the official one take 15-40 s each on 2 cores, and the AVX2 checks start
new Python processes: they are `slow` (out of `make test`, which must stay under 2 minutes); `make
test-bench` runs them, and `.ci/run` calls it after the quick suite.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMOKE_OF_A_MODEL = pytest.mark.slow


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_avx2() -> bool:
    try:
        return " avx2 " in Path("/proc/cpuinfo").read_text() + " "
    except OSError:
        return False


EMULATION = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
NEEDS_AVX2 = pytest.mark.skipif(not _has_avx2(), reason="the CPU has no AVX2 to run as")


def _env_without_emulation() -> dict[str, str]:
    drop = {*EMULATION, "SAMMOE_BENCH_CPU_CAPABILITY"}
    return {k: v for k, v in os.environ.items() if k not in drop}


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
    assert "torch CPU capability" in out and "command: " in out and "benchmarks/segment.py --smoke" in out


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
    assert called == {"encoder.py", "segment.py", "train_step.py", "cohort.py", "gpu_summary.py"}
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


def test_machine_header_names_cpu_capability_threads_torch_and_command():
    import torch

    machine = _load("machine")
    info = machine.describe(str(BENCHMARKS / "ct_click.py"), ["--smoke", "--repeats", "2"])
    text = machine.header(info)
    assert info["cpu"] == machine.cpu_model() and info["cpu"] in text
    assert f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}" in text
    assert f"torch {torch.__version__}, {torch.get_num_threads()} threads" in text
    assert f"bf16_pays (vit_b width, cpu): {info['bf16_pays']}" in text and info["bf16_pays"] in (True, False)
    assert info["command"].endswith("benchmarks/ct_click.py --smoke --repeats 2")
    assert f"command: {info['command']}" in text and info["command"] in machine.markdown(info)
    assert json.loads(json.dumps(info)) == info  # goes into the benchmarks' JSON as it is


def test_cpu_capability_check_refuses_in_one_line_when_torch_reports_another(monkeypatch):
    machine = _load("machine")
    monkeypatch.setattr(machine.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    with pytest.raises(SystemExit) as refused:
        machine.check_capability("avx2")
    assert "torch reports AVX512" in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.slow
@NEEDS_AVX2
def test_cpu_capability_avx2_reruns_as_an_avx2_cpu(capfd):
    command = [sys.executable, str(BENCHMARKS / "machine.py"), "--cpu-capability", "avx2"]
    proc = subprocess.run(command, capture_output=True, text=True, env=_env_without_emulation())
    assert proc.returncode == 0, proc.stderr
    machine_line, bf16_line = proc.stdout.splitlines()[:2]
    assert "torch CPU capability AVX2" in machine_line and "512" not in machine_line.split("oneDNN ISA")[1]
    # bf16 autocast must not be the automatic choice on an AVX2 CPU; where sammoe's check reads the
    # hardware instead, the header says so
    assert (
        bf16_line.endswith("bf16_pays (vit_b width, cpu): False")
        or "WARNING bf16_pays does NOT" in proc.stdout
    )
    assert (
        "command: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 "
        in proc.stdout
    )
    # called in-process (as the smoke tests call main), the benchmark runs in a child with the variables
    assert _load("machine").main(["--cpu-capability", "avx2"]) is None
    assert "torch CPU capability AVX2" in capfd.readouterr().out


@pytest.mark.slow
@NEEDS_AVX2
def test_as_avx2_wrapper_runs_any_command_as_an_avx2_cpu():
    script = str(BENCHMARKS / "as_avx2.sh")
    env = {**_env_without_emulation(), "PYTHON": sys.executable}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    proc = subprocess.run(
        ["bash", script, sys.executable, "-c", probe], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "AVX2", proc.stderr
    assert subprocess.run(["bash", script], capture_output=True, env=env).returncode == 2  # usage


def test_ct_volume_is_ct_like():
    import numpy as np

    ct_click = _load("ct_click")
    array, affine = ct_click.ct_volume(3)
    assert array.shape == (512, 512, 3) and array.dtype == np.int16
    assert np.allclose(np.abs(np.diag(affine)[:3]), [0.7, 0.7, 5.0])
    click = ct_click.liver_click(3).astype(int)
    assert 0 < array[tuple(click)] < 130  # liver, 60 HU +- noise
    assert array[0, 0, 1] < -900 and array[256, 121, 1] > 500  # air; vertebral cortex 14 mm from its centre


@SMOKE_OF_A_MODEL
def test_ct_click_smoke_compares_first_click_and_refinement(tmp_path, capsys):
    paths = {"json": tmp_path / "ct.json", "markdown": tmp_path / "ct.md"}
    result = _load("ct_click").main(
        ["--smoke", "--json", str(paths["json"]), "--markdown", str(paths["markdown"])]
    )
    out = capsys.readouterr().out
    assert [case["shape"] for case in result["cases"]] == [(512, 512, 8), (512, 512, 16)]
    for case in result["cases"]:
        assert (
            case["first_ratio"] > 0 and case["sammoe_refine_s"] > 0 and case["sammoe_first_over_refine"] > 0
        )
    assert out.count("open + first click") == 2 and out.count("sammoe first/refine") == 2
    assert "torch CPU capability" in out and "command: " in out
    saved = json.loads(paths["json"].read_text())
    assert saved["machine"]["command"].endswith("--markdown " + str(paths["markdown"]))
    table = paths["markdown"].read_text()
    assert "| CT 512x512x16: open + first click |" in table and "- command: `" in table


@SMOKE_OF_A_MODEL
def test_cohort_smoke_compares_one_batch_run_with_a_process_per_scan(capsys):
    result = _load("cohort").main(["--smoke"])
    assert result["cases"] == 2 and result["batch_s"] > 0 and result["ratio"] > 0
    assert result["same_label_maps"] is True
    out = capsys.readouterr().out
    assert "one process per scan" in out and "torch CPU capability" in out and "benchmarks/cohort.py" in out
