"""Expert decoders for a backbone: installed plugins (the one place they are assembled) and decoders
exported by a finetuning run."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sammoe.errors import CheckpointError, ConfigError, PluginError
from sammoe.loading.checkpoints import read_state_dict
from sammoe.loading.router import ROUTER_FILE, load_router_file, router_from_bytes
from sammoe.model.router import ExpertRouter
from sammoe.model.sam3d import SamMed3D, backbone_fingerprint


def decoder_mismatch(decoder: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` cannot load strictly into ``decoder`` (None when it can)."""
    own = decoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s), first {missing[0]}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s), first {unexpected[0]}")
    for key in sorted(set(own) & set(state)):
        if tuple(own[key].shape) != tuple(state[key].shape):
            parts.append(f"{key} has shape {tuple(state[key].shape)}, expected {tuple(own[key].shape)}")
            break
        if not state[key].is_floating_point():
            parts.append(f"{key} has dtype {state[key].dtype}, expected a floating-point tensor")
            break
        if not bool(torch.isfinite(state[key]).all()):
            parts.append(f"{key} holds NaN or infinite values")
            break
    return "; ".join(parts) or None


def expert_decoder(backbone: SamMed3D, record: Any) -> nn.Module:
    """A frozen copy of the backbone's decoder holding a plugin's weights (sha256-checked safetensors).

    Raises PluginError (one line naming the expert) when the weights do not fit the backbone's decoder.
    """
    from sammoe.plugins.discovery import load_expert_weights

    state = load_expert_weights(record)
    problem = decoder_mismatch(backbone.mask_decoder, state)
    if problem:
        preset = record.manifest.backbone.preset if record.manifest else "?"
        raise PluginError(
            f"expert {record.name!r} ({record.origin}): weights do not fit the {preset} mask decoder: "
            f"{problem}; repackage the expert"
        )
    decoder = copy.deepcopy(backbone.mask_decoder)
    decoder.load_state_dict(state, strict=True)
    return decoder.requires_grad_(False).eval()


def expert_router(backbone: SamMed3D, record: Any) -> ExpertRouter:
    """The plugin's own router (sha256-checked), checked against the backbone; PluginError (one line naming
    the expert) when it ships none or it does not fit."""
    from sammoe.plugins.discovery import load_router_bytes

    if record.manifest is not None and record.manifest.router is None:
        raise PluginError(
            f"expert {record.name!r} ({record.origin}) ships no router; a gate trained over the installed "
            "experts must route it (or its author adds one: configs/router.yaml)"
        )
    path, data = load_router_bytes(record)
    try:
        return router_from_bytes(data, str(path), backbone, record.name)
    except CheckpointError as err:
        raise PluginError(f"expert {record.name!r} ({record.origin}): router: {err}") from None


def load_experts(backbone: SamMed3D, names: Iterable[str] | None = None) -> list[tuple[Any, nn.Module]]:
    """(record, decoder) of every expert plugin to merge with this backbone, in name order: the one place
    experts are assembled (inference, gate training and `sammoe experts verify` all come here).

    With ``names`` (a config's or the user's list) every one must be installed, ok, trained on this backbone
    and loadable, else PluginError. Without, every installed (or SAMMOE_EXPERTS-selected) expert that fits is
    used and each other one is skipped with a PluginWarning that says why.
    """
    from sammoe.plugins.discovery import PluginWarning, select_experts

    strict = names is not None
    records = select_experts(names, backbone_fingerprint=backbone_fingerprint(backbone))
    loaded = []
    for record in records:
        try:
            loaded.append((record, expert_decoder(backbone, record)))
        except PluginError as err:
            if strict:
                raise
            warnings.warn(f"skipping broken plugin: {err}", PluginWarning, stacklevel=2)
    return loaded


def load_expert_decoders(backbone: SamMed3D, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """name -> decoder of ``load_experts`` (e.g. ``SamMoE(backbone, experts=...)``)."""
    return {record.name: decoder for record, decoder in load_experts(backbone, names)}


def load_decoder_file(backbone: SamMed3D, name: str, path: str | Path) -> tuple[nn.Module, list[str]]:
    """A decoder exported by expert finetuning (``decoder.safetensors`` + its ``.json`` sidecar) and its
    task classes, checked against the backbone it was finetuned on."""
    file = Path(path)
    sidecar = file.with_suffix(".json")
    if not file.is_file() or not sidecar.is_file():
        raise CheckpointError(
            f"expert {name!r}: {file} (and its {sidecar.name} sidecar) not found; give the "
            "expert/decoder.safetensors that `sammoe fit --config configs/finetune.yaml` wrote"
        )
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"expert {name!r}: {sidecar} is not readable JSON ({err}); re-export it"
        ) from None
    expected = meta.get("backbone_fingerprint")
    if expected is not None and expected != backbone_fingerprint(backbone):
        raise CheckpointError(
            f"expert {name!r}: {file} was finetuned on another backbone; load the foundation it was "
            "finetuned from (model.init_args.checkpoint)"
        )
    state = read_state_dict(file)
    problem = decoder_mismatch(backbone.mask_decoder, state)
    if problem:
        raise CheckpointError(
            f"expert {name!r}: {file} does not fit the {meta.get('preset')} decoder ({problem})"
        )
    decoder = copy.deepcopy(backbone.mask_decoder)
    decoder.load_state_dict(state)
    return decoder, list((meta.get("task") or {}).get("classes") or {})


def assemble_experts(
    backbone: SamMed3D,
    names: Sequence[str] | None,
    files: dict[str, str] | None = None,
    routers: dict[str, Any] | None = None,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Expert decoders (name -> MaskDecoder3D, frozen) and the class -> expert map of their tasks, as routing
    training and evaluation use them.

    `files` (name -> exported decoder) are loaded directly; plugins are discovered unless `files` is given
    and `names` is not: `names` = exactly those plugins, None = every usable installed plugin. Plugins are
    checked against the backbone's fingerprint. With `routers` (a dict), each expert's own router is put there
    (a plugin's packaged one; an exported decoder's ``router.safetensors`` beside it); PluginError or
    CheckpointError when one is missing or does not fit.
    """
    found: list[tuple[str, nn.Module, list[str]]] = []
    if names is not None or not files:
        for record, decoder in load_experts(backbone, None if names is None else list(names)):
            found.append((record.name, decoder, list(record.manifest.task.classes)))
            if routers is not None:
                routers[record.name] = expert_router(backbone, record)
    for name, path in (files or {}).items():
        if any(name == other for other, _, _ in found):
            raise ConfigError(f"expert {name!r} is both an installed plugin and in expert_files; rename one")
        found.append((name, *load_decoder_file(backbone, name, path)))
        if routers is not None:
            routers[name] = load_router_file(Path(path).parent / ROUTER_FILE, backbone, name)
    if not found:
        raise ConfigError(
            "no usable expert plugin is installed; install one (e.g. pip install experts/<project>) or "
            "list them in model.init_args.experts (`sammoe experts list` shows what is installed)"
        )
    decoders, class_to_expert = {}, {}
    for name, decoder, classes in found:
        decoders[name] = decoder.requires_grad_(False)
        for cls in classes:
            if cls in class_to_expert:
                warnings.warn(
                    f"class {cls!r} is claimed by experts {class_to_expert[cls]!r} and {name!r}; "
                    f"routing it to {class_to_expert[cls]!r}",
                    stacklevel=2,
                )
                continue
            class_to_expert[cls] = name
    return decoders, class_to_expert
