"""SamMoE: one frozen SAM-Med3D trunk, the foundation decoder E0 plus task-expert decoders, a gate and a
selector.

Per interactive step: prompt encoder once -> gate -> the selected decoder(s) only. The image is encoded
once per volume by the shared encoder, exactly as in plain SAM-Med3D.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sammoe.model.decoder import MaskDecoder3D
from sammoe.model.gate import (
    LOCAL_RADII,
    GatingNetwork,
    MaskSelector,
    routing_features,
)
from sammoe.model.router import ExpertRouter, route_by_routers
from sammoe.model.sam3d import SamMed3D

FOUNDATION = "foundation"


@dataclass
class MoEStep:
    """Outputs of one interactive step."""

    logits: torch.Tensor  # (B, 1, L, L, L) low-res mask logits of the routed (or fused) decoder
    iou: torch.Tensor  # (B, 1)
    gate_logits: torch.Tensor  # (B, K+1)
    probs: torch.Tensor  # (B, K+1)
    route: torch.Tensor  # (B,) expert index used (0 = foundation); -1 for soft fusion


class SamMoE(nn.Module):
    def __init__(
        self,
        backbone: SamMed3D,
        experts: dict[str, MaskDecoder3D] | None = None,
        gate_hidden_dim: int = 256,
        selector: MaskSelector | None = None,
        gate_local_radii: Sequence[int] = LOCAL_RADII,
        gate_texture: bool = False,
        gate_robust_texture: bool = False,
        gate_patch_radius: int = 0,
    ) -> None:
        super().__init__()
        experts = dict(experts or {})
        if FOUNDATION in experts:
            raise ValueError(f"expert name {FOUNDATION!r} is reserved for the foundation decoder")
        self.backbone = backbone
        self.experts = nn.ModuleDict(experts)
        self.expert_names = [FOUNDATION, *experts]
        self.gate = GatingNetwork(
            backbone.config.prompt_embed_dim,
            len(self.expert_names),
            gate_hidden_dim,
            local_radii=gate_local_radii,
            texture=gate_texture,
            robust_texture=gate_robust_texture,
            patch_radius=gate_patch_radius,
        )
        self.selector = selector or MaskSelector()
        self.routers = nn.ModuleDict()

    @property
    def routing(self) -> str:
        """``gate`` (the joint gate of the paper) or ``routers`` (each expert's own router)."""
        return "routers" if len(self.routers) else "gate"

    @property
    def reads_image(self) -> bool:
        """Whether routing reads the encoded crop around the click (local statistics), not only features."""
        if self.routing == "routers":
            return any(r.reads_image for r in self.routers.values())
        return self.gate.reads_image

    def use_routers(self, routers: dict[str, ExpertRouter]) -> None:
        """Route with each expert's own router instead of the gate: one router per expert, in expert order."""
        if list(routers) != self.expert_names[1:]:
            raise ValueError(f"routers {list(routers)} do not match the experts {self.expert_names[1:]}")
        self.routers = nn.ModuleDict(routers).to(self.gate.norm.weight.device)

    @property
    def decoders(self) -> list[nn.Module]:
        return [self.backbone.mask_decoder, *self.experts.values()]

    def freeze_all_but_gate(self) -> None:
        for param in self.parameters():
            param.requires_grad_(False)
        for param in self.gate.parameters():
            param.requires_grad_(True)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone.image_encoder(image)

    def gate_logits(
        self,
        image_embeddings: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gate logits (B, K+1) for these clicks, without decoding (what gate training needs)."""
        prompt = None if points is None else (points, labels)
        sparse, _ = self.backbone.prompt_encoder(points=prompt, boxes=None, masks=None)
        return self.gate(self._gate_input(image_embeddings, sparse, points, labels, image))

    def router_probs(self, image_embeddings, sparse, points, labels, image) -> torch.Tensor:
        """(B, K+1): column k>0 the calibrated probability of expert k's router, column 0 one minus the
        largest of them (the foundation's share, for reports)."""
        size = self.backbone.img_size
        features: dict[tuple, torch.Tensor] = {}  # routers reading the same features share them
        columns = []
        for router in self.routers.values():
            key = router.layout
            if key not in features:
                features[key] = routing_features(image_embeddings, sparse, points, labels, size, image, *key)
            columns.append(router.probability(features[key]))
        probs = torch.stack(columns, 1)
        return torch.cat([1.0 - probs.amax(1, keepdim=True), probs], 1)

    def _gate_input(self, image_embeddings, sparse, points, labels, image) -> torch.Tensor:
        size = self.backbone.img_size
        return routing_features(image_embeddings, sparse, points, labels, size, image, *self.gate.layout)

    def step(
        self,
        image_embeddings: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_prompt: torch.Tensor | None,
        route: torch.Tensor | int | None = None,
        image: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
    ) -> MoEStep:
        """One interactive step. `route` forces experts (an index or one per sample): oracle routing and
        per-expert evaluation; otherwise the experts' routers (``routing == "routers"``) or the gate and its
        selector decide. `image` is the encoded crop (B or 1, 1, S, S, S), needed when routing reads it
        (``reads_image``). `probs` (B, K+1) with `route`: the routing an earlier step of these targets
        computed, reused as is (routing reads only the first positive click, so a refinement click cannot
        change it, and the texture statistics cost more than a decoder pass)."""
        prompt_encoder = self.backbone.prompt_encoder
        sparse, dense = prompt_encoder(
            points=None if points is None else (points, labels), boxes=None, masks=mask_prompt
        )
        if probs is not None:
            if route is None:
                raise ValueError("probs from an earlier step need that step's route")
            gate_logits = torch.logit(probs.float(), eps=1e-6)
        elif self.routing == "routers":
            probs = self.router_probs(image_embeddings, sparse, points, labels, image)
            gate_logits = torch.logit(probs, eps=1e-6)
            if route is None:
                thresholds = torch.stack([r.threshold for r in self.routers.values()])
                route = route_by_routers(probs[:, 1:], thresholds)
        else:
            gate_logits = self.gate(self._gate_input(image_embeddings, sparse, points, labels, image))
            probs = gate_logits.float().softmax(1)
        pe = prompt_encoder.get_dense_pe()
        bsz = image_embeddings.shape[0]
        if route is None and self.selector.mode == "soft":  # the gate's selector (routers always route)
            outs = [dec(image_embeddings, pe, sparse, dense, multimask_output=False) for dec in self.decoders]
            weights = probs.to(outs[0][0].dtype)
            logits = sum(w.view(-1, 1, 1, 1, 1) * o[0] for w, o in zip(weights.unbind(1), outs))
            iou = sum(w.view(-1, 1) * o[1] for w, o in zip(weights.unbind(1), outs))
            return MoEStep(logits, iou, gate_logits, probs, torch.full((bsz,), -1, device=probs.device))
        if route is None:
            if self.selector.mode == "oracle":
                raise ValueError("oracle selection needs the true expert per sample (route=...)")
            route = self.selector.route(probs)
        elif isinstance(route, int):
            route = torch.full((bsz,), route, dtype=torch.long, device=image_embeddings.device)
        logits, iou = self._decode_routed(image_embeddings, pe, sparse, dense, route)
        return MoEStep(logits, iou, gate_logits, probs, route)

    def _decode_routed(
        self, emb, pe, sparse, dense, route: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each selected decoder on its own samples only."""
        decoders = self.decoders
        chosen = route.unique().tolist()
        if len(chosen) == 1:
            return decoders[chosen[0]](emb, pe, sparse, dense, multimask_output=False)
        logits = iou = None
        for k in chosen:
            idx = (route == k).nonzero().squeeze(1)
            part_logits, part_iou = decoders[k](emb[idx], pe, sparse[idx], dense[idx], multimask_output=False)
            if logits is None:
                logits = part_logits.new_empty(emb.shape[0], *part_logits.shape[1:])
                iou = part_iou.new_empty(emb.shape[0], *part_iou.shape[1:])
            logits[idx], iou[idx] = part_logits, part_iou
        return logits, iou
