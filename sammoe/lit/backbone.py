"""Build the SAM-Med3D backbone a LightningModule starts from: a preset plus weights."""

from __future__ import annotations

from pathlib import Path

import torch

from sammoe.errors import CheckpointError
from sammoe.model.sam3d import PRESETS, SamMed3D

SEEDED = "seeded"
"""`checkpoint` value for the preset's reproducible seeded initialisation (e.g. to pretrain the foundation)."""


def build_backbone(preset: str, checkpoint: str | Path | None = None) -> SamMed3D:
    """The preset with weights from `checkpoint`:

    - None: the preset's default weights (for `tiny` the shipped foundation model when present, else the
      seeded initialisation; see `sammoe.plugins.backbone`),
    - "seeded": the seeded initialisation (`torch.manual_seed(0)`; the global RNG state is kept),
    - a path: an official `.pth` (e.g. `sam_med3d_turbo.pth` for `vit_b_ori`) or a `.safetensors` file.
    """
    from sammoe.plugins.backbone import DEFAULT_SEED, load_backbone

    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    if checkpoint is None:
        return load_backbone(preset).train()
    if str(checkpoint) == SEEDED:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(DEFAULT_SEED)
            return SamMed3D.from_preset(preset)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"{path}: checkpoint not found; give the path of a {preset} .pth/.safetensors file "
            "(or null for the preset's default weights)"
        )
    return SamMed3D.from_preset(preset, path)


def describe_checkpoint(preset: str, checkpoint: str | Path | None) -> str:
    if checkpoint is None:
        from sammoe.plugins.backbone import default_checkpoint

        default = default_checkpoint(preset)
        return str(default) if default is not None else f"{preset} seeded initialisation"
    return str(checkpoint)
