"""The frozen backbone an expert plugs into: build it and identify it by fingerprint. Imports torch.

Without an explicit checkpoint a preset gets its default weights: for `tiny` the foundation model shipped in
the package (`sammoe.assets.FOUNDATION_TINY`) when present; otherwise the preset built after
`torch.manual_seed(DEFAULT_SEED)` (the global RNG state is restored), which is reproducible but untrained.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sammoe.model.sam3d import PRESETS, SamMed3D, backbone_fingerprint

DEFAULT_SEED = 0
TRUNK_PREFIXES = ("image_encoder.", "prompt_encoder.")


def default_checkpoint(preset: str) -> Path | None:
    """The weights a preset stands for when no checkpoint is given (None: seeded initialisation)."""
    if preset == "tiny":
        from sammoe.assets import FOUNDATION_TINY

        if FOUNDATION_TINY.is_file():
            return FOUNDATION_TINY
    return None


def load_backbone(preset: str, checkpoint: str | Path | None = None) -> SamMed3D:
    """The preset with the checkpoint's weights, else its default weights (see module docstring)."""
    checkpoint = checkpoint if checkpoint is not None else default_checkpoint(preset)
    if checkpoint is not None:
        return SamMed3D.from_preset(preset, checkpoint).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_SEED)
        return SamMed3D.from_preset(preset).eval()


def backbone_source(preset: str, checkpoint: str | Path | None = None) -> str:
    """Where `load_backbone(preset, checkpoint)` takes its weights from, for messages and READMEs."""
    checkpoint = checkpoint if checkpoint is not None else default_checkpoint(preset)
    if checkpoint is not None:
        return Path(checkpoint).name
    return f"the {preset} preset seeded with torch.manual_seed({DEFAULT_SEED}), untrained"


def known_presets() -> list[str]:
    return sorted(PRESETS)


def fingerprint(model: SamMed3D) -> str:
    return backbone_fingerprint(model)
