"""`sammoe experts package`: turn a finetuned expert checkpoint into a pip-installable plugin project.

Accepted checkpoints (see `read_checkpoint`):

- a Lightning `.ckpt` (read weights-only by `sammoe.loading.checkpoints`): `state_dict` holds the decoder
under one
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
from sammoe.loading.checkpoints import load_weights_file
from sammoe.loading.router import ROUTER_FILE, check_router_bytes
from sammoe.model.sam3d import PRESETS, backbone_fingerprint
from sammoe.plugins.manifest import (
    NAME_PATTERN,
    SAMMOE_API,
    ExpertManifest,
    validation_summary,
)
from sammoe.publish.project import WEIGHTS_FILE, distribution_name, module_name, write_project

__all__ = ["ExpertCheckpoint", "build_manifest", "distribution_name", "package_expert", "read_checkpoint"]

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
    try:
        obj = load_weights_file(path)
    except CheckpointError as err:
        hint = "" if path.suffix == ".safetensors" else "; save hyperparameters as plain JSON types"
        raise PluginError(f"{err}{hint}") from None
    if path.suffix == ".safetensors":
        state = obj
        sidecar = path.with_suffix(".json")
        info = _load_json(sidecar, "sidecar") if meta is None or sidecar.is_file() else {}
    else:
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
        "weights": {"package": module_name(name), "path": WEIGHTS_FILE, "sha256": "0" * 64},
        "provenance": {"finetuned": True, "training_data": dataset, **meta.get("provenance", {})},
    }
    try:
        return ExpertManifest.model_validate(data)
    except ValidationError as err:
        raise PluginError(f"{ckpt.source}: metadata is invalid: {validation_summary(err)}") from None


def _default_requirement() -> str:
    major, minor = sammoe_version.split(".")[:2]
    return f">={major}.{minor}"


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
        write_project(tmp, manifest, ckpt.decoder, fp_source, router_data)
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
