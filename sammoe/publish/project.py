"""The files of a generated expert plugin project: the package (weights, manifest, an ``__init__`` whose
entry point reads the manifest), ``pyproject.toml``, a README and a test. Generated Python never embeds text
from the checkpoint or the manifest: a description could close a docstring and run code on import."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from sammoe.loading.router import ROUTER_FILE, router_metrics
from sammoe.plugins.checksums import sha256_bytes, sha256_file
from sammoe.plugins.manifest import ENTRY_POINT_GROUP, ExpertManifest, RouterRef

WEIGHTS_FILE = "decoder.safetensors"
MANIFEST_FILE = "manifest.json"


def module_name(name: str) -> str:
    return f"sammoe_expert_{name}"


def distribution_name(name: str) -> str:
    return f"sammoe-expert-{name.replace('_', '-')}"


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a private directory; give the project the modes a normal mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_project(
    root: Path,
    manifest: ExpertManifest,
    decoder: dict[str, torch.Tensor],
    fp_source: str,
    router: bytes | None = None,
) -> None:
    from safetensors.torch import save_file

    module = module_name(manifest.name)
    pkg = root / module
    pkg.mkdir()
    weights = pkg / WEIGHTS_FILE
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(decoder.items())}
    save_file(tensors, str(weights))  # no metadata: its header order is not stable across runs
    weights_ref = manifest.weights.model_copy(update={"sha256": sha256_file(weights)})
    manifest = manifest.model_copy(update={"weights": weights_ref})
    if router is not None:
        (pkg / ROUTER_FILE).write_bytes(router)
        ref = {"package": module, "path": ROUTER_FILE, "sha256": sha256_bytes(router)}
        metrics = router_metrics(router, ROUTER_FILE)
        manifest = manifest.model_copy(update={"router": RouterRef(**ref, **metrics)})
    (pkg / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    (pkg / "__init__.py").write_text(_INIT)
    (root / "pyproject.toml").write_text(_pyproject(manifest, module))
    (root / "README.md").write_text(_readme(manifest, fp_source))
    (root / ".gitignore").write_text("build/\ndist/\n*.egg-info/\n__pycache__/\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_expert.py").write_text(_TEST)
    _normal_permissions(root)


# The name, description and test target are read from manifest.json at run time (see the module docstring).
_INIT = '''"""A sammoe expert plugin; its name, task and description are in manifest.json beside it."""

from sammoe.plugins import ExpertManifest


def manifest() -> ExpertManifest:
    """Entry point of group `sammoe.experts`: reads the packaged manifest.json, imports no torch."""
    return ExpertManifest.from_package(__name__)
'''


def _pyproject(manifest: ExpertManifest, module: str) -> str:
    router = f', "{ROUTER_FILE}"' if manifest.router is not None else ""
    return f'''[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{distribution_name(manifest.name)}"
version = {json.dumps(manifest.version)}
description = {json.dumps(manifest.description)}
readme = "README.md"
requires-python = ">=3.10"
dependencies = [{json.dumps("sammoe" + manifest.requires_sammoe)}]

[project.entry-points."{ENTRY_POINT_GROUP}"]
{manifest.name} = "{module}:manifest"

[tool.setuptools]
packages = ["{module}"]

[tool.setuptools.package-data]
{module} = ["{MANIFEST_FILE}", "{WEIGHTS_FILE}"{router}]
'''


def _readme(manifest: ExpertManifest, fp_source: str) -> str:
    task, prov = manifest.task, manifest.provenance
    classes = ", ".join(f"{k}={v}" for k, v in task.classes.items())
    dice = ", ".join(f"{k} {v:.3f}" for k, v in prov.reported_dice.items()) or "not reported"
    trained = "yes" if prov.finetuned else "NO: placeholder weights, not finetuned"
    fingerprint = manifest.backbone.fingerprint[:16]
    backbone = f"`{manifest.backbone.preset}`, fingerprint `{fingerprint}...` (from {fp_source})"
    return f"""# {distribution_name(manifest.name)}

A sammoe expert plugin: a SAM-Med3D mask decoder for one task, found by sammoe through the
`{ENTRY_POINT_GROUP}` entry point `{manifest.name}`.

```
pip install .
sammoe experts list
sammoe experts verify {manifest.name}
```

| | |
| --- | --- |
| expert | `{manifest.name}` {manifest.version} ({manifest.kind}) |
| classes (label values) | {classes} |
| modality / spacing / crop | {task.modality} / {task.target_spacing} mm / {task.crop_size} |
| backbone | {backbone} |
| weights | `{manifest.weights.path}`, sha256 `{manifest.weights.sha256[:16]}...` |
| training data | {prov.training_data} |
| finetuned | {trained} |
| reported Dice | {dice} |

{prov.notes}

Generated by `sammoe experts package`; the manifest is `{module_name(manifest.name)}/{MANIFEST_FILE}`.
"""


_TEST = '''"""Checks that the installed plugin is found and works: `pip install . && pytest tests`."""

import json
import os
from pathlib import Path

import pytest

from sammoe.plugins import discover, verify_expert

# the expert's name, read from the packaged manifest.json (never written into this file)
NAME = next(
    json.loads(path.read_text(encoding="utf-8"))["name"]
    for path in Path(__file__).resolve().parents[1].glob("sammoe_expert_*/manifest.json")
)


def test_discovered_ok():
    (record,) = discover([NAME])
    assert record.status == "ok", record.reason


def test_forward_pass_on_its_backbone():
    """Set SAMMOE_BACKBONE to the backbone checkpoint when the expert was not trained on the seeded preset."""
    (record,) = discover([NAME])
    checked = verify_expert(record, backbone_checkpoint=os.environ.get("SAMMOE_BACKBONE"))
    if checked.status == "incompatible" and "SAMMOE_BACKBONE" not in os.environ:
        pytest.skip(checked.reason)
    assert checked.status == "ok", checked.reason
'''
