"""Wheel = checkout: the built wheel, installed into a fresh virtual environment, runs `sammoe demo --fast`
from an empty folder (configs and the example experts come from the package, nothing from the checkout).

Slow (a fresh environment and the demo: about 8-10 minutes on 2 cores); `.ci/run` runs it after the default
suite, `make test-wheel` here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_outside_the_checkout(tmp_path):
    from importlib.metadata import version

    import torch
    from packaging.version import Version

    wheels = tmp_path / "wheels"
    # build with this environment's setuptools when it is new enough (pyproject's requires), else isolated
    isolation = [] if Version(version("setuptools")) < Version("77") else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("sammoe-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    version = torch.__version__.split("+")[0]  # the torch already here (a CPU build on these machines)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"torch=={version}"], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAMMOE_EXPERTS", "VIRTUAL_ENV")}
    env["WANDB_MODE"] = "offline"
    proc = subprocess.run(
        [str(venv / "bin" / "sammoe"), "demo", "--fast", "--out", "runs/demo"],
        cwd=empty,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "using the copies shipped in sammoe" in proc.stdout
    assert (empty / "runs" / "demo" / "report.md").is_file()
    assert not (empty / "configs").exists()  # the configs came from the installed package
