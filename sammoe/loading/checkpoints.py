"""Backbone weights: read a checkpoint once, recognise its preset from the tensor shapes, build the backbone;
save weights as safetensors. See the package docstring."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sammoe.errors import CheckpointError
from sammoe.hub import DEMO, REGISTRY, SEEDED, resolve_checkpoint
from sammoe.model.sam3d import PRESETS, SamMed3D

DEFAULT_SEED = 0
TRUNK_PREFIXES = ("image_encoder.", "prompt_encoder.")
# Module prefixes a whole state_dict may carry: DDP, LightningModules (ExpertFinetune, GateTraining).
_PREFIXES = ("module.", "model.", "backbone.", "moe.backbone.")


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
                f"{source}: {key} has dtype {value.dtype}, expected floating-point weights; "
                "re-export the model"
            )
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(
                f"{source}: {key} holds NaN or infinite values (a diverged training run?); "
                "use another checkpoint"
            )
    return state


def load_weights_file(path: str | Path, *, mmap: bool = False) -> dict[str, Any]:
    """What a weights file holds, loaded without running any code: a ``.safetensors`` file's tensors, or a
    torch file read weights-only (official training checkpoints also pickle ``args``, an
    ``argparse.Namespace``: a plain attribute bag, allowed). The one reader of checkpoints; CheckpointError
    names the file and the fix. ``mmap`` maps a torch file's tensors instead of reading them (a check
    only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # SafetensorError, OSError, ValueError, ...
            raise CheckpointError(
                f"{path} is not a readable safetensors file ({err}); re-download or re-export it"
            ) from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for corrupt or pickle-unsafe files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} cannot be loaded with weights_only=True ({first[:160]}): it is damaged, or pickles "
            "Python objects that could run code, which a weights-only load refuses; re-download it, or "
            "re-save its tensors alone (`torch.save({'model_state_dict': sd}, path)`, or .safetensors with "
            "a .json sidecar)"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of one weights file (see the module docstring), checked to be finite floating point."""
    obj = load_weights_file(path)
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: holds no state_dict of tensors (expected a 'model_state_dict' entry)")
    return _check_tensors(_strip_prefix(obj), str(path))


LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # resolved by Lightning itself


def check_resume_checkpoint(ckpt_path: str | Path | None) -> None:
    """Refuse a `--ckpt_path` Lightning would load unsafely: a URL (Lightning unpickles remote files with
    code execution allowed), a missing file, or a file that does not load weights-only. Lightning's own
    names (`last`, `best`, ...) pass: it resolves them inside the run folder."""
    if ckpt_path is None or str(ckpt_path) in LIGHTNING_CKPT_NAMES:
        return
    text = str(ckpt_path)
    if "://" in text:
        raise CheckpointError(
            f"--ckpt_path {text}: checkpoints are never loaded from a URL (a pickle can run code); download "
            "it yourself from a source you trust and pass the local file"
        )
    path = Path(text)
    if not path.is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such checkpoint file; check the path (or use `last`)")
    try:
        load_weights_file(path, mmap=True)
    except CheckpointError as err:
        raise CheckpointError(
            f"--ckpt_path: not a Lightning checkpoint that loads without running code: {err}"
        ) from None


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


def _is_seeded(checkpoint: str | Path) -> bool:
    """The name ``"seeded"``, not a path: ``Path("./seeded")`` (a file of that name) prints as ``seeded``."""
    return isinstance(checkpoint, str) and checkpoint == SEEDED


def load_backbone(checkpoint: str | Path | None = None, preset: str = "auto") -> SamMed3D:
    """The backbone of ``checkpoint`` (see the module docstring), in eval mode."""
    if preset != "auto" and preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    if isinstance(checkpoint, str) and (checkpoint == DEMO or checkpoint in REGISTRY):
        checkpoint = resolve_checkpoint(checkpoint).path  # demo: None, the shipped tiny model
    if checkpoint is None or _is_seeded(checkpoint):
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
    """Load ``state`` into ``model``; a mis-shaped key (and with ``strict`` a missing or unexpected one) is
    one CheckpointError naming it (``strict=False``: a partial state, e.g. a checkpoint's frozen trunk)."""
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
    if checkpoint is not None and not _is_seeded(checkpoint):
        return Path(checkpoint).name
    default = default_checkpoint(preset) if checkpoint is None else None
    if default is not None:
        return default.name
    return f"the {preset} preset seeded with torch.manual_seed({DEFAULT_SEED}), untrained"


def save_backbone(model: SamMed3D, path: str | Path) -> Path:
    """The model's weights as safetensors (contiguous float copies)."""
    return save_tensors({k: v.detach() for k, v in model.state_dict().items()}, path)


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file sammoe wrote with ``save_tensors`` (keys as stored, no checks on
    their meaning); CheckpointError when it cannot be read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); delete it") from None


def save_tensors(
    state: dict[str, torch.Tensor], path: str | Path, meta: dict[str, str] | None = None
) -> Path:
    from safetensors.torch import save

    from sammoe.files import write_file

    data = save({k: v.to("cpu").contiguous() for k, v in state.items()}, metadata=meta)
    return write_file(path, data)
