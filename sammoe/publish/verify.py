"""Deep check of a discovered expert: backbone fingerprint, weights load strictly, one forward pass; the same
for its router when it ships one.

Discovery already checked the manifest, API, sammoe version, the weights file and its sha256. Imports torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from sammoe.errors import PluginError
from sammoe.loading import backbone_source, expert_decoder, load_backbone
from sammoe.loading.experts import expert_router
from sammoe.model.gate import routing_features
from sammoe.model.sam3d import PRESETS, backbone_fingerprint
from sammoe.plugins.discovery import ExpertRecord


def _probe(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded random volume and one positive centre click: the input of the forward checks."""
    size = model.img_size
    image = torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(233))
    return image, torch.full((1, 1, 3), size / 2.0), torch.ones(1, 1, dtype=torch.long)


@torch.no_grad()
def forward_check(model: nn.Module, decoder: nn.Module) -> str | None:
    """Run the expert decoder once on a seeded random volume with one centre click; None when sane."""
    image, points, labels = _probe(model)
    mask = image.new_zeros(1, 1, *model.prompt_encoder.mask_input_size)
    logits, iou = model.decode(model.image_encoder(image), points, labels, mask, decoder=decoder)
    expected = (1, 1, *model.prompt_encoder.mask_input_size)
    if tuple(logits.shape) != expected:
        return f"forward pass gave logits of shape {tuple(logits.shape)}, expected {expected}"
    if not (torch.isfinite(logits).all() and torch.isfinite(iou).all()):
        return "forward pass gave non-finite logits"
    return None


class BackboneCache:
    """Builds each (preset, checkpoint) backbone once and remembers its fingerprint."""

    def __init__(self, checkpoint: str | Path | None = None) -> None:
        self.checkpoint = checkpoint
        self._models: dict[str, tuple[nn.Module, str]] = {}

    def get(self, preset: str) -> tuple[nn.Module, str]:
        if preset not in self._models:
            model = load_backbone(self.checkpoint, preset)
            self._models[preset] = (model, backbone_fingerprint(model))
        return self._models[preset]


def verify_expert(
    record: ExpertRecord,
    *,
    backbone_checkpoint: str | Path | None = None,
    cache: BackboneCache | None = None,
) -> ExpertRecord:
    """The record with its status after the deep checks (ok / incompatible / broken, one-line reason).

    `backbone_checkpoint` holds the frozen trunk the expert must fit (default: the preset's default weights,
    see `sammoe.loading.load_backbone`). A bad `backbone_checkpoint` raises CheckpointError (the user's
    error).
    """
    if not record.ok or record.manifest is None:
        return record
    manifest = record.manifest
    preset = manifest.backbone.preset
    if preset not in PRESETS:
        return record.with_status(
            "incompatible",
            f"backbone preset {preset!r} is unknown here (known: {', '.join(sorted(PRESETS))})",
            "install a sammoe that provides it",
        )
    cache = cache or BackboneCache(backbone_checkpoint)
    model, fingerprint = cache.get(preset)
    if fingerprint != manifest.backbone.fingerprint:
        fix = (
            "pass --backbone with the checkpoint the expert was trained on"
            if cache.checkpoint is None
            else (
                "this checkpoint is not the backbone the expert was trained on; "
                "pass the right one to --backbone"
            )
        )
        return record.with_status(
            "incompatible",
            f"trained on backbone {preset} {manifest.backbone.fingerprint[:12]}..., "
            f"{backbone_source(preset, cache.checkpoint)} has {fingerprint[:12]}...",
            fix,
        )
    try:
        decoder = expert_decoder(model, record)
    except PluginError as err:
        return replace(record, status="broken", reason=str(err))
    problem = forward_check(model, decoder)
    if problem:
        return record.with_status("broken", problem, "repackage the expert from a healthy checkpoint")
    if manifest.router is not None:
        try:
            router = expert_router(model, record)
        except PluginError as err:
            return replace(record, status="broken", reason=str(err))
        problem = router_check(model, router)
        if problem:
            return record.with_status("broken", f"router: {problem}", "retrain and repackage the router")
    return record


@torch.no_grad()
def router_check(model: nn.Module, router: nn.Module) -> str | None:
    """Run the router once on a seeded random volume with one centre click; None when it gives a
    probability."""
    image, points, labels = _probe(model)
    size = model.img_size
    sparse, _ = model.prompt_encoder(points=(points, labels), boxes=None, masks=None)
    features = routing_features(
        model.image_encoder(image), sparse, points, labels, size, image, *router.layout
    )
    probability = router.probability(features)
    if probability.shape != (1,) or not bool(((probability >= 0) & (probability <= 1)).all()):
        return f"forward pass gave {probability.tolist()}, not one probability"
    return None
