"""`sammoe experts package`: turn a finetuned expert checkpoint into a pip-installable plugin project.

Accepted checkpoints (see `read_checkpoint`):

- a Lightning `.ckpt` (read with `torch.load(weights_only=True)`): `state_dict` holds the decoder under one
  prefix ending in `mask_decoder.` (e.g. `model.mask_decoder.*`) and may hold the frozen trunk
  (`model.image_encoder.*`, `model.prompt_encoder.*`); `hyper_parameters` carries the metadata below as plain
  JSON types.
- a `.safetensors` with the decoder (`mask_decoder.*` or bare decoder keys) plus a JSON sidecar with the
  metadata (default: the same path with `.json`).

Metadata: `preset` (required), `task` (required: `classes`, optional `modality`, `target_spacing`,
`crop_size`, `dataset`), optional `backbone_fingerprint`, `provenance`, `description`, `version`.
`--meta FILE.json` overrides keys of either source. Other Lightning hyperparameters become
`provenance.config`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from sammoe import __version__ as sammoe_version
from sammoe.errors import CheckpointError, PluginError
from sammoe.loading import TRUNK_PREFIXES, backbone_source, decoder_mismatch, load_backbone, load_state
from sammoe.loading.router import ROUTER_FILE, check_router_bytes, router_metrics
from sammoe.model.sam3d import PRESETS, backbone_fingerprint
from sammoe.plugins.checksums import sha256_bytes, sha256_file
from sammoe.plugins.manifest import (
    ENTRY_POINT_GROUP,
    NAME_PATTERN,
    SAMMOE_API,
    ExpertManifest,
    RouterRef,
    validation_summary,
)

WEIGHTS_FILE = "decoder.safetensors"
MANIFEST_FILE = "manifest.json"
_META_KEYS = ("preset", "task", "backbone_fingerprint", "provenance", "description", "version")


@dataclass
class ExpertCheckpoint:
    """What a finetuning run leaves behind, normalised."""

    decoder: dict[str, torch.Tensor]
    trunk: dict[str, torch.Tensor]  # image_encoder.* / prompt_encoder.* when the checkpoint has them
    meta: dict[str, Any]
    source: Path


def _split_state(state: dict[str, torch.Tensor], source: Path) -> tuple[dict, dict]:
    """Decoder keys (prefix up to `mask_decoder.` removed) and trunk keys (same prefix removed)."""
    prefixes = {k[: k.index("mask_decoder.")] for k in state if "mask_decoder." in k}
    if not prefixes:
        return dict(state), {}
    if len(prefixes) > 1:
        found = ", ".join(sorted(p + "mask_decoder." for p in prefixes))
        raise PluginError(
            f"{source}: several decoders in one checkpoint ({found}); export the expert's alone"
        )
    (prefix,) = prefixes
    decoder = {
        k[len(prefix) + len("mask_decoder.") :]: v
        for k, v in state.items()
        if k.startswith(prefix + "mask_decoder.")
    }
    trunk = {
        k[len(prefix) :]: v
        for k, v in state.items()
        if k.startswith(prefix) and k[len(prefix) :].startswith(TRUNK_PREFIXES)
    }
    return decoder, trunk


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PluginError(f"{what} {path} not found; write it or pass --meta FILE.json") from None
    except (OSError, json.JSONDecodeError) as err:
        raise PluginError(f"{what} {path} is not readable JSON: {err}") from None
    if not isinstance(data, dict):
        raise PluginError(f"{what} {path} must hold a JSON object")
    return data


def read_checkpoint(path: str | Path, meta: str | Path | None = None) -> ExpertCheckpoint:
    """Read a Lightning `.ckpt` or a `.safetensors` + JSON sidecar; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise PluginError(f"checkpoint {path} not found; pass the finetuned expert's .ckpt or .safetensors")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:
            raise PluginError(f"{path} is not a readable safetensors file: {err}") from None
        sidecar = path.with_suffix(".json")
        info = _load_json(sidecar, "sidecar") if meta is None or sidecar.is_file() else {}
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise PluginError(
                f"{path} cannot be loaded with weights_only=True ({first}); it pickles Python objects "
                "(e.g. hyperparameters that are not plain dict/list/str/number): save hyperparameters as "
                "plain JSON types, or export the decoder as .safetensors plus a .json sidecar"
            ) from None
        if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
            raise PluginError(f"{path} has no 'state_dict'; expected a Lightning checkpoint")
        state = obj["state_dict"]
        hparams = obj.get("hyper_parameters") or {}
        info = {k: hparams[k] for k in _META_KEYS if k in hparams}
        config = {k: v for k, v in hparams.items() if k not in _META_KEYS}
        if config and isinstance(info.get("provenance", {}), dict):
            info["provenance"] = {"config": _jsonable(config), **info.get("provenance", {})}
    if meta is not None:
        info.update(_load_json(Path(meta), "metadata file"))
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PluginError(f"{path}: the state dict holds non-tensor values")
    decoder, trunk = _split_state(state, path)
    return ExpertCheckpoint(decoder=decoder, trunk=trunk, meta=info, source=path)


def _jsonable(value: Any) -> Any:
    """Drop what JSON cannot hold (a weights-only checkpoint holds only containers, numbers and strings)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return str(value)


def _trunk_fingerprint(
    ckpt: ExpertCheckpoint, model: torch.nn.Module, backbone: str | Path | None
) -> tuple[str, str]:
    """(fingerprint, where it came from): trunk in the checkpoint > --backbone > metadata > default weights.

    `model` is the preset with its default weights; the checkpoint's trunk, when present, is loaded into it.
    """
    if ckpt.trunk:
        try:
            load_state(model, ckpt.trunk, str(ckpt.source), strict=False)
        except CheckpointError as err:
            raise PluginError(str(err)) from None
        trunk_keys = [k for k in model.state_dict() if k.startswith(TRUNK_PREFIXES)]
        missing = [k for k in trunk_keys if k not in ckpt.trunk]
        if missing:
            raise PluginError(f"{ckpt.source}: the frozen trunk in the checkpoint lacks {missing[0]}")
        return backbone_fingerprint(model), f"the trunk stored in {ckpt.source.name}"
    if backbone is not None:
        return backbone_fingerprint(load_backbone(backbone, ckpt.meta["preset"])), str(backbone)
    if "backbone_fingerprint" in ckpt.meta:
        return str(ckpt.meta["backbone_fingerprint"]), "the checkpoint's metadata"
    return backbone_fingerprint(model), backbone_source(ckpt.meta["preset"])


def build_manifest(
    ckpt: ExpertCheckpoint, name: str, *, version: str | None, fingerprint: str, img_size: int
) -> ExpertManifest:
    """The manifest (weights sha256 still a placeholder) from the checkpoint's metadata."""
    meta = ckpt.meta
    task = {"crop_size": (img_size,) * 3, **meta["task"]}
    dataset = task.get("dataset") or "unknown"
    data = {
        "name": name,
        "version": version or meta.get("version") or "0.1.0",
        "sammoe_api": SAMMOE_API,
        "requires_sammoe": _default_requirement(),
        "kind": "decoder",
        "description": meta.get("description") or f"SAM-Med3D expert decoder finetuned on {dataset}",
        "task": task,
        "backbone": {"preset": meta["preset"], "fingerprint": fingerprint},
        "weights": {"package": _module_name(name), "path": WEIGHTS_FILE, "sha256": "0" * 64},
        "provenance": {"finetuned": True, "training_data": dataset, **meta.get("provenance", {})},
    }
    try:
        return ExpertManifest.model_validate(data)
    except ValidationError as err:
        raise PluginError(f"{ckpt.source}: metadata is invalid: {validation_summary(err)}") from None


def _default_requirement() -> str:
    major, minor = sammoe_version.split(".")[:2]
    return f">={major}.{minor}"


def _module_name(name: str) -> str:
    return f"sammoe_expert_{name}"


def distribution_name(name: str) -> str:
    return f"sammoe-expert-{name.replace('_', '-')}"


def package_expert(
    checkpoint: str | Path,
    name: str,
    out: str | Path,
    *,
    version: str | None = None,
    meta: str | Path | None = None,
    backbone: str | Path | None = None,
    router: str | Path | None = None,
) -> Path:
    """Write a plugin project for the expert into `out` (which must not exist or be empty). Returns `out`.

    `router`: the expert's router (``configs/router.yaml``); None takes ``router.safetensors`` next to the
    checkpoint when there is one. It must fit the same trunk and carry the expert's name."""
    if not re.match(NAME_PATTERN, name):
        raise PluginError(
            f"expert name {name!r} is invalid; use lowercase letters, digits and _ (e.g. liver)"
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PluginError(f"{out} already exists and is not empty; choose a new --out directory")
    ckpt = read_checkpoint(checkpoint, meta)
    for key, kind, required in (("preset", str, True), ("task", dict, True), ("provenance", dict, False)):
        value = ckpt.meta.get(key)
        if (required or value is not None) and not isinstance(value, kind):
            raise PluginError(
                f"{ckpt.source}: metadata has no {key!r} {kind.__name__}; add it to the sidecar, the "
                "checkpoint's hyperparameters, or pass --meta FILE.json"
            )
    preset = ckpt.meta["preset"]
    if preset not in PRESETS:
        raise PluginError(
            f"{ckpt.source}: unknown preset {preset!r}; use one of {', '.join(sorted(PRESETS))}"
        )
    model = load_backbone(None, preset)
    problem = decoder_mismatch(model.mask_decoder, ckpt.decoder)
    if problem:
        raise PluginError(f"{ckpt.source}: the decoder does not fit preset {preset!r}: {problem}")
    fingerprint, fp_source = _trunk_fingerprint(ckpt, model, backbone)
    manifest = build_manifest(ckpt, name, version=version, fingerprint=fingerprint, img_size=model.img_size)
    router_data = _router_bytes(router, ckpt.source, name, model.config.prompt_embed_dim, fingerprint)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        _write_project(tmp, manifest, ckpt.decoder, fp_source, router_data)
        _normal_permissions(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _router_bytes(
    router: str | Path | None, checkpoint: Path, name: str, embed_dim: int, fingerprint: str
) -> bytes | None:
    """The router file's bytes, checked to load for this expert and trunk (None: no router to ship)."""
    path = Path(router) if router is not None else checkpoint.parent / ROUTER_FILE
    if router is None and not path.is_file():
        return None
    if not path.is_file():
        raise PluginError(f"{path}: router not found; give the router.safetensors router training wrote")
    data = path.read_bytes()
    try:
        check_router_bytes(data, str(path), embed_dim, fingerprint, name)
    except CheckpointError as err:
        raise PluginError(str(err)) from None
    return data


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a private directory; give the project the modes a normal mkdir/open would."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _write_project(
    root: Path,
    manifest: ExpertManifest,
    decoder: dict[str, torch.Tensor],
    fp_source: str,
    router: bytes | None = None,
) -> None:
    from safetensors.torch import save_file

    module = _module_name(manifest.name)
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


# Generated Python never embeds text from the checkpoint or the manifest (a description could close the
# docstring and run code on import): the name, description and test target are read from manifest.json.
_INIT = '''"""A sammoe expert plugin; what it is (name, task, description) is in manifest.json beside this file."""

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
| backbone | `{manifest.backbone.preset}`, fingerprint `{manifest.backbone.fingerprint[:16]}...` (from {fp_source}) |
| weights | `{manifest.weights.path}`, sha256 `{manifest.weights.sha256[:16]}...` |
| training data | {prov.training_data} |
| finetuned | {trained} |
| reported Dice | {dice} |

{prov.notes}

Generated by `sammoe experts package`; the manifest is `{_module_name(manifest.name)}/{MANIFEST_FILE}`.
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
