"""The one way from files to models: backbone checkpoints, expert decoders, gates, and every check on them.

Nothing here executes code from a file: torch checkpoints load with ``weights_only=True`` (plus the official
training checkpoints' ``argparse.Namespace``), everything sammoe writes is safetensors. Each file is read
once; the architecture of a backbone checkpoint is recognised from its tensor shapes, and when none fits, the
preset that fits best names the first difference. Weights must be finite floating-point tensors.

Public API
----------
- ``read_state_dict(path) -> dict``: tensors of a ``.safetensors`` file, an official ``.pth`` (under
  ``model_state_dict``) or a Lightning checkpoint (under ``state_dict``, module prefixes dropped).
- ``detect_preset(state, source) -> str``: the preset whose keys and shapes the state matches exactly.
- ``load_backbone(checkpoint=None, preset="auto") -> SamMed3D`` (eval mode): ``checkpoint`` None = the
  preset's default weights (``tiny``: the shipped foundation model when present, else the seeded
  initialisation), ``"seeded"`` = that seeded initialisation, else a path.
- ``backbone_source(preset, checkpoint=None)``: where those weights come from, for messages.
- ``load_state(model, state, source, strict=True)``: a checked ``load_state_dict``.
- ``save_backbone(model, path)``, ``save_tensors(state, path, meta=None)``: safetensors via ``sammoe.files``.
- ``expert_decoder(backbone, record)``, ``load_experts(backbone, names=None)``, ``load_expert_decoders``:
  installed expert plugins assembled for a backbone (see ``load_experts``).
- ``load_decoder_file(backbone, name, path) -> (decoder, classes)``: a decoder exported by finetuning.
- ``save_gate(moe, path)``, ``load_gate(moe, path)``: a SamMoE's gate with its metadata.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sammoe.errors import CheckpointError, PluginError
from sammoe.model.gate import GatingNetwork, MaskSelector
from sammoe.model.moe import SamMoE
from sammoe.model.sam3d import PRESETS, SamMed3D, backbone_fingerprint

SEEDED = "seeded"
DEFAULT_SEED = 0
TRUNK_PREFIXES = ("image_encoder.", "prompt_encoder.")
# Module prefixes a whole state_dict may carry: DDP, LightningModules (ExpertFinetune, GateTraining).
_PREFIXES = ("module.", "model.", "backbone.", "moe.backbone.")


# ----------------------------------------------------------------------------------------------- reading
def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if state and any(k.startswith("backbone.") for k in state):  # a Lightning checkpoint with other parts
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _check_tensors(state: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key} is a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(
                f"{source}: {key} has dtype {value.dtype}, expected floating-point weights; re-export the model"
            )
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{source}: {key} holds NaN or infinite values (a diverged training run?); use another checkpoint"
            )
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one weights file (see the module docstring), checked to be finite floating point."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{path}: not a readable safetensors file ({err}); re-download or re-export it"
            ) from None
        return _check_tensors(_strip_prefix(state), str(path))
    try:
        # Official training checkpoints also pickle `args` (an argparse.Namespace): a plain attribute bag,
        # safe to allow; anything else that is not a tensor container is refused.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or pickle-unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot be read as a weights-only torch checkpoint ({first}); re-download it, or re-save "
            "the model_state_dict alone with `torch.save({'model_state_dict': sd}, path)`"
        ) from None
    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict of tensors (expected a 'model_state_dict' entry)")
    return _check_tensors(_strip_prefix(obj), str(path))


# ----------------------------------------------------------------------------------------------- presets
def _expected(preset: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = SamMed3D(PRESETS[preset])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _differences(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != expected[k])
    out = [f"{k} has shape {tuple(state[k].shape)}, expected {expected[k]}" for k in shapes]
    out += [f"missing {k} {expected[k]}" for k in missing]
    out += [f"unexpected {k}" for k in unexpected]
    return out


def detect_preset(state: dict[str, torch.Tensor], source: str, preset: str = "auto") -> str:
    """The preset ``state`` fits exactly (``preset`` given: check that one). Otherwise one CheckpointError
    naming the closest preset and its first difference."""
    names = sorted(PRESETS) if preset == "auto" else [preset]
    if preset != "auto" and preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    diffs = {name: _differences(state, _expected(name)) for name in names}
    exact = [name for name, found in diffs.items() if not found]
    if exact:
        return exact[0]
    closest = min(diffs, key=lambda name: len(diffs[name]))
    found = diffs[closest]
    more = f" (and {len(found) - 1} more difference(s))" if len(found) > 1 else ""
    what = "matches no SAM-Med3D preset" if preset == "auto" else f"does not fit the {preset} preset"
    raise CheckpointError(
        f"{source}: {what}; closest is {closest}: {found[0]}{more}; pick the preset the checkpoint was "
        "trained with or re-export it"
    )


# ----------------------------------------------------------------------------------------------- backbone
def default_checkpoint(preset: str) -> Path | None:
    """The weights a preset stands for when no checkpoint is given (None: seeded initialisation)."""
    if preset == "tiny":
        from sammoe.assets import FOUNDATION_TINY

        if FOUNDATION_TINY.is_file():
            return FOUNDATION_TINY
    return None


def seeded_backbone(preset: str) -> SamMed3D:
    """The preset built after ``torch.manual_seed(DEFAULT_SEED)``; the global RNG state is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_SEED)
        return SamMed3D(PRESETS[preset])


def load_backbone(checkpoint: str | Path | None = None, preset: str = "auto") -> SamMed3D:
    """The backbone of ``checkpoint`` (see the module docstring), in eval mode."""
    if preset != "auto" and preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    if checkpoint is None or str(checkpoint) == SEEDED:
        name = "tiny" if preset == "auto" else preset
        default = default_checkpoint(name) if checkpoint is None else None
        if default is None:
            return seeded_backbone(name).eval()
        checkpoint = default
    path = Path(checkpoint).expanduser()
    state = read_state_dict(path)
    model = SamMed3D(PRESETS[detect_preset(state, str(path), preset)])
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Load ``state`` into ``model``; a mis-shaped key (and with ``strict`` a missing or unexpected one) is one
    CheckpointError naming it (``strict=False``: a partial state, e.g. a checkpoint's frozen trunk)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = _differences(state, expected)
    if not strict:
        found = [d for d in found if not d.startswith("missing ")]
    if found:
        more = f" (and {len(found) - 1} more difference(s))" if len(found) > 1 else ""
        raise CheckpointError(f"{source}: {found[0]}{more}; pick the preset the checkpoint was trained with")
    model.load_state_dict(state, strict=strict)


def preset_of(model: SamMed3D) -> str:
    """The name of the preset ``model`` was built from (``custom`` for other configurations)."""
    return next((name for name, config in PRESETS.items() if config == model.config), "custom")


def backbone_source(preset: str, checkpoint: str | Path | None = None) -> str:
    """Where ``load_backbone(checkpoint, preset)`` takes its weights from, for messages and READMEs."""
    if checkpoint is not None and str(checkpoint) != SEEDED:
        return Path(checkpoint).name
    default = default_checkpoint(preset) if checkpoint is None else None
    if default is not None:
        return default.name
    return f"the {preset} preset seeded with torch.manual_seed({DEFAULT_SEED}), untrained"


def save_backbone(model: SamMed3D, path: str | Path) -> Path:
    """The model's weights as safetensors (contiguous float copies)."""
    return save_tensors({k: v.detach() for k, v in model.state_dict().items()}, path)


def save_tensors(
    state: dict[str, torch.Tensor], path: str | Path, meta: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save

    from sammoe.files import write_file

    data = save({k: v.to("cpu").contiguous() for k, v in state.items()}, metadata=meta)
    return write_file(path, data)


# ----------------------------------------------------------------------------------------------- experts
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


# ----------------------------------------------------------------------------------------------- gate
def save_gate(moe: SamMoE, path: str | Path) -> Path:
    """Gate weights (safetensors) with the expert order, selector and trunk fingerprint as metadata."""
    meta = {
        "expert_names": json.dumps(moe.expert_names),
        "selector_mode": moe.selector.mode,
        "tau": repr(float(moe.selector.tau)),
        "backbone_fingerprint": backbone_fingerprint(moe.backbone),
        "hidden_dim": str(moe.gate.hidden_dim),
        "local_radii": json.dumps(list(moe.gate.local_radii)),
    }
    return save_tensors({k: v.detach() for k, v in moe.gate.state_dict().items()}, path, meta)


def load_gate(moe: SamMoE, path: str | Path) -> None:
    """Load a gate saved by ``save_gate`` into ``moe``; its experts and trunk must be the ones the gate was
    trained over, and its metadata within range. A refused file changes nothing."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: gate weights not found; train a gate with `sammoe fit --config configs/gate.yaml`"
        )
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (safe_open has no iterator)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable gate file ({err}); retrain or re-copy it") from None
    try:
        names = json.loads(meta.get("expert_names", "[]"))
        hidden = int(meta.get("hidden_dim", moe.gate.hidden_dim))
        radii = tuple(int(r) for r in json.loads(meta.get("local_radii", "[]")))  # older gates: none
        tau = float(meta.get("tau", 0.5))
        selector = MaskSelector(
            meta.get("selector_mode", "threshold"), tau if math.isfinite(tau) else math.nan
        )
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable gate metadata ({err}); retrain or re-copy it") from None
    if not 1 <= hidden <= 65536 or len(radii) > 16 or any(not 0 < r <= 256 for r in radii):
        raise CheckpointError(
            f"{path}: gate metadata out of range (hidden_dim {hidden}, local_radii {list(radii)}); "
            "the file is damaged, retrain or re-copy it"
        )
    if names != moe.expert_names:
        raise CheckpointError(
            f"{path}: gate was trained over experts {names} but the loaded experts are {moe.expert_names}; "
            "install/select the same experts (SAMMOE_EXPERTS) or retrain the gate"
        )
    if meta.get("backbone_fingerprint") not in (None, backbone_fingerprint(moe.backbone)):
        raise CheckpointError(
            f"{path}: gate was trained on a different backbone; load the matching checkpoint"
        )
    _check_tensors(state, str(path))
    gate = GatingNetwork(moe.backbone.config.prompt_embed_dim, len(names), hidden, local_radii=radii)
    try:
        gate.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path}: gate weights do not match its metadata ({first}); retrain or re-copy it"
        ) from None
    old = moe.gate  # the new gate keeps the old one's device and train/eval mode
    moe.gate = gate.to(old.norm.weight.device).train(old.training)
    moe.selector = selector
