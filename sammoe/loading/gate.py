"""A SamMoE's gate on disk: weights plus metadata (expert order, selector, trunk fingerprint, sizes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from sammoe.errors import CheckpointError
from sammoe.loading.checkpoints import _check_tensors, save_tensors
from sammoe.model.click_patch import PATCH_RADII
from sammoe.model.gate import GatingNetwork, MaskSelector
from sammoe.model.moe import SamMoE
from sammoe.model.sam3d import backbone_fingerprint


def save_gate(moe: SamMoE, path: str | Path) -> Path:
    """Gate weights (safetensors) with the expert order, selector and trunk fingerprint as metadata."""
    meta = {
        "expert_names": json.dumps(moe.expert_names),
        "selector_mode": moe.selector.mode,
        "tau": repr(float(moe.selector.tau)),
        "backbone_fingerprint": backbone_fingerprint(moe.backbone),
        "hidden_dim": str(moe.gate.hidden_dim),
        "local_radii": json.dumps(list(moe.gate.local_radii)),
        "texture": json.dumps(moe.gate.texture),
        "robust_texture": json.dumps(moe.gate.robust_texture),
        "patch_radius": str(moe.gate.patch_radius),
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
        texture = json.loads(meta.get("texture", "false"))  # older gates: none
        robust = json.loads(meta.get("robust_texture", "false"))  # older gates: none
        patch = int(meta.get("patch_radius", "0"))  # older gates: none
        if not isinstance(texture, bool) or not isinstance(robust, bool):
            raise ValueError(f"texture and robust_texture must be true or false, not {texture!r}, {robust!r}")
        tau = float(meta.get("tau", 0.5))
        selector = MaskSelector(
            meta.get("selector_mode", "threshold"), tau if math.isfinite(tau) else math.nan
        )
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: unreadable gate metadata ({err}); retrain or re-copy it") from None
    if (
        not 1 <= hidden <= 65536
        or len(radii) > 16
        or any(not 0 < r <= 256 for r in radii)
        or (texture and not radii)
        or (patch != 0 and patch not in PATCH_RADII)
    ):
        raise CheckpointError(
            f"{path}: gate metadata out of range (hidden_dim {hidden}, local_radii {list(radii)}, "
            f"texture {texture}, patch_radius {patch}); "
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
    gate = GatingNetwork(
        moe.backbone.config.prompt_embed_dim,
        len(names),
        hidden,
        local_radii=radii,
        texture=texture,
        robust_texture=robust,
        patch_radius=patch,
    )
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
