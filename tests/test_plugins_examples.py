"""The example experts under experts/: reproducible from their script, pip-installable, found and verified."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sammoe.data.phantoms import LABELS
from sammoe.plugins.discovery import discover
from sammoe.plugins.testing import pip_install_target
from sammoe.publish.verify import BackboneCache, verify_expert

ROOT = Path(__file__).resolve().parents[1]
EXPERTS = ROOT / "experts"
EXAMPLES = {"spinal_cord": "sammoe-expert-spinal-cord", "textured_lesion": "sammoe-expert-textured-lesion"}


def _package(project: str) -> Path:
    """The package folder of the example project ``project`` (its name in snake case)."""
    return EXPERTS / project / project.replace("-", "_")


def _manifest(project: str) -> dict:
    return json.loads((_package(project) / "manifest.json").read_text())


def _files(project: Path) -> dict[str, bytes]:
    skip = ("build", "dist", "__pycache__")
    return {
        str(p.relative_to(project)): p.read_bytes()
        for p in project.rglob("*")
        if p.is_file() and not any(part in skip or part.endswith(".egg-info") for part in p.parts)
    }


def test_build_script_reproduces_the_committed_examples(tmp_path):
    """Packaging is deterministic: the committed weights plus their manifest's metadata give the same
    project."""
    arguments = []
    for name, project in EXAMPLES.items():
        package = _package(project)
        manifest = _manifest(project)
        checkpoint = tmp_path / "checkpoints" / name / "decoder.safetensors"
        checkpoint.parent.mkdir(parents=True)
        shutil.copy(package / "decoder.safetensors", checkpoint)
        if (package / "router.safetensors").is_file():  # the router beside the decoder is packaged with it
            shutil.copy(package / "router.safetensors", checkpoint.parent / "router.safetensors")
        sidecar = {
            "preset": manifest["backbone"]["preset"],
            "task": manifest["task"],
            "backbone_fingerprint": manifest["backbone"]["fingerprint"],
            "provenance": manifest["provenance"],
            "version": manifest["version"],
        }
        checkpoint.with_suffix(".json").write_text(json.dumps(sidecar))
        arguments += ["--checkpoint", f"{name}={checkpoint}"]
    run = subprocess.run(
        [sys.executable, str(EXPERTS / "build_examples.py"), "--out-dir", str(tmp_path / "out"), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    for project in EXAMPLES.values():
        fresh, committed = _files(tmp_path / "out" / project), _files(EXPERTS / project)
        assert fresh.keys() == committed.keys()
        stale = sorted(k for k in fresh if fresh[k] != committed[k])
        assert not stale, f"experts/{project} differs from a rebuild ({stale}); rerun `make experts-train`"


def test_examples_are_finetuned_and_better_than_the_foundation_on_their_task():
    for project in EXAMPLES.values():
        manifest = _manifest(project)
        assert manifest["provenance"]["finetuned"] is True
        (dice,) = manifest["provenance"]["reported_dice"].values()
        assert dice > 0.5, f"{project}: reported validation Dice {dice}"


def test_example_routers_keep_false_claims_within_budget_on_each_general_class():
    """The shipped routers were trained with the per-class rule (configs/router.yaml, max_false_claims 0.02):
    a router from the pooled rule records no worst-class rate, and one over budget claims livers."""
    for project in EXAMPLES.values():
        router = _manifest(project)["router"]
        worst = router.get("false_claims_general_worst")
        assert worst is not None, f"{project}: its router predates the per-class rule; `make routers`"
        assert worst <= 0.02 and router["false_claims_background"] <= 0.02, (project, router)
        # a rate pooled over the general classes never exceeds the worst class's
        assert router["false_claims_general"] <= worst, (project, router)
        assert router["recall"] >= 0.9, (project, router)


def test_examples_install_with_pip_and_verify_ok(tmp_path):
    target = tmp_path / "site"
    copies = []
    for project in EXAMPLES.values():  # copies: pip must not write build/ into the repository
        copies.append(tmp_path / project)
        shutil.copytree(EXPERTS / project, copies[-1], ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip_install_target(copies, target)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *sys.path])}
    env["SAMMOE_EXPERTS"] = ",".join(EXAMPLES)
    listed = subprocess.run(
        [sys.executable, "-m", "sammoe", "experts", "list", "--json"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    records = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(records) == set(EXAMPLES)
    for name, dist in EXAMPLES.items():
        assert records[name]["status"] == "ok", records[name]["reason"]
        assert records[name]["distribution"] == dist
        assert records[name]["weights_path"].startswith(str(target))
        assert records[name]["manifest"]["task"]["classes"] == {name: LABELS[name]}
    verified = subprocess.run(
        [sys.executable, "-m", "sammoe", "experts", "verify"], env=env, capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_installed_examples_are_ok_in_this_environment(monkeypatch):
    """`make install` pip-installs the examples; in such an environment they must verify in-process."""
    monkeypatch.delenv("SAMMOE_EXPERTS", raising=False)
    records = discover(list(EXAMPLES))
    if any(r.distribution is None for r in records):
        pytest.skip("example experts are not pip-installed in this environment (make install does it)")
    cache = BackboneCache()
    for record in records:
        checked = verify_expert(record, cache=cache)
        assert checked.status == "ok", checked.reason
        assert checked.manifest.task.classes == {record.name: LABELS[record.name]}
