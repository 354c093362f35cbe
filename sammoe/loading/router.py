"""An expert's router on disk: weights (temperature and threshold included) plus metadata (expert, task
classes, trunk fingerprint, feature layout, measured recall and false-claim rates)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sammoe.errors import CheckpointError
from sammoe.loading.checkpoints import _check_tensors, save_tensors
from sammoe.model.click_patch import PATCH_RADII
from sammoe.model.router import ExpertRouter
from sammoe.model.sam3d import SamMed3D, backbone_fingerprint

ROUTER_FILE = "router.safetensors"
# Measured on held-out clicks by router training; copied into the plugin manifest by `experts package`.
METRICS = ("recall", "false_claims_general", "false_claims_general_worst", "false_claims_background")


def save_router(
    router: ExpertRouter,
    path: str | Path,
    *,
    name: str,
    classes: dict[str, int],
    backbone: SamMed3D,
    metrics: dict[str, float],
) -> Path:
    """Router weights (safetensors) with what loading checks and what the manifest reports as metadata."""
    meta = {
        "expert": name,
        "classes": json.dumps(classes),
        "backbone_fingerprint": backbone_fingerprint(backbone),
        "hidden_dim": str(router.hidden_dim),
        "local_radii": json.dumps(list(router.local_radii)),
        "texture": json.dumps(router.texture),
        "robust_texture": json.dumps(router.robust_texture),
        "patch_radius": str(router.patch_radius),
        "trunk": json.dumps(router.trunk),
        "metrics": json.dumps({k: float(metrics[k]) for k in METRICS if k in metrics}),
    }
    return save_tensors({k: v.detach() for k, v in router.state_dict().items()}, path, meta)


def safetensors_metadata(data: bytes, source: str) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (the format: 8-byte little-endian header size,
    JSON header)."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= len(data) - 8:
        raise CheckpointError(
            f"{source}: not a safetensors file (bad header size); re-export or reinstall it"
        )
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as err:
        raise CheckpointError(f"{source}: unreadable safetensors header ({err}); re-export it") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def router_from_bytes(data: bytes, source: str, backbone: SamMed3D, name: str) -> ExpertRouter:
    """Build the router that ``data`` (a file ``save_router`` wrote) holds, checked against ``backbone``
    and the expert ``name``. CheckpointError (one line naming ``source``) when anything does not fit."""
    embed_dim = backbone.config.prompt_embed_dim
    return check_router_bytes(data, source, embed_dim, backbone_fingerprint(backbone), name)


def check_router_bytes(data: bytes, source: str, embed_dim: int, fingerprint: str, name: str) -> ExpertRouter:
    """``router_from_bytes`` against a trunk known by its prompt embedding width and fingerprint."""
    from safetensors.torch import load

    meta = safetensors_metadata(data, source)
    try:
        state = load(data)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{source}: not a readable safetensors file ({err}); re-export it") from None
    try:
        hidden = int(meta.get("hidden_dim", "128"))
        radii = tuple(int(r) for r in json.loads(meta.get("local_radii", "[]")))
        texture = json.loads(meta.get("texture", "false"))
        robust = json.loads(meta.get("robust_texture", "false"))  # older routers: none
        patch = int(meta.get("patch_radius", "0"))  # older routers: none
        trunk = json.loads(meta.get("trunk", "true"))  # older routers: the trunk's features
        if not isinstance(trunk, bool):
            raise ValueError(f"trunk must be true or false, not {trunk!r}")
        if not isinstance(texture, bool) or not isinstance(robust, bool):
            raise ValueError(f"texture and robust_texture must be true or false, not {texture!r}, {robust!r}")
    except (ValueError, TypeError) as err:
        raise CheckpointError(
            f"{source}: unreadable router metadata ({err}); retrain or re-copy it"
        ) from None
    if meta.get("expert") not in (None, name):
        raise CheckpointError(f"{source}: a router of expert {meta.get('expert')!r}, not of {name!r}")
    if meta.get("backbone_fingerprint") != fingerprint:
        raise CheckpointError(
            f"{source}: router was trained on another backbone; retrain it on the foundation its expert uses"
        )
    bad_patch = patch != 0 and patch not in PATCH_RADII
    if not 1 <= hidden <= 65536 or len(radii) > 16 or any(not 0 < r <= 256 for r in radii) or bad_patch:
        raise CheckpointError(
            f"{source}: router metadata out of range (hidden_dim {hidden}, local_radii {list(radii)}, "
            f"patch_radius {patch}); "
            "the file is damaged, retrain or re-copy it"
        )
    _check_tensors(state, source)
    try:
        router = ExpertRouter(
            embed_dim,
            hidden,
            local_radii=radii,
            texture=texture,
            robust_texture=robust,
            patch_radius=patch,
            trunk=trunk,
        )
        router.load_state_dict(state)
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{source}: router weights do not match its metadata ({first}); retrain or re-copy it"
        ) from None
    temperature, threshold = float(router.temperature), float(router.threshold)
    if not (0.01 <= temperature <= 100.0 and 0.0 <= threshold <= 1.0):
        raise CheckpointError(
            f"{source}: router temperature {temperature!r} or threshold {threshold!r} out of range "
            "(0.01-100, 0-1); retrain or re-copy it"
        )
    return router.requires_grad_(False).eval()


def load_router_file(path: str | Path, backbone: SamMed3D, name: str) -> ExpertRouter:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: router not found; train one with `sammoe fit --config configs/router.yaml "
            f"--config configs/experts/{name}.yaml`"
        )
    return router_from_bytes(path.read_bytes(), str(path), backbone, name)


def router_metrics(data: bytes, source: str) -> dict[str, Any]:
    """The measured recall and false-claim rates a router file records (empty when it records none)."""
    try:
        metrics = json.loads(safetensors_metadata(data, source).get("metrics", "{}"))
    except ValueError:
        return {}
    if not isinstance(metrics, dict):
        return {}
    return {
        k: float(v)
        for k, v in metrics.items()
        if k in METRICS and isinstance(v, int | float) and math.isfinite(v) and 0 <= v <= 1
    }
