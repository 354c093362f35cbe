"""The frozen backbone an expert plugs into: build it and identify it by fingerprint. Imports torch.

Without a checkpoint a preset is built from `torch.manual_seed(DEFAULT_SEED)` (the global RNG state is
restored afterwards), so that the tiny backbone used by the example experts and the tests is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sammoe.model.sam3d import PRESETS, SamMed3D, backbone_fingerprint

DEFAULT_SEED = 0
TRUNK_PREFIXES = ("image_encoder.", "prompt_encoder.")


def load_backbone(preset: str, checkpoint: str | Path | None = None) -> SamMed3D:
    """The preset with the checkpoint's weights, or its reproducible seeded initialisation."""
    if checkpoint is not None:
        return SamMed3D.from_preset(preset, checkpoint).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DEFAULT_SEED)
        return SamMed3D.from_preset(preset).eval()


def backbone_source(checkpoint: str | Path | None) -> str:
    return (
        str(checkpoint)
        if checkpoint is not None
        else f"seeded initialisation (torch.manual_seed({DEFAULT_SEED}))"
    )


def known_presets() -> list[str]:
    return sorted(PRESETS)


def fingerprint(model: SamMed3D) -> str:
    return backbone_fingerprint(model)
