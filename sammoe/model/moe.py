"""SamMoE: one frozen SAM-Med3D trunk, the foundation decoder E0 plus task-expert decoders, a gate and a selector.

Per interactive step: prompt encoder once -> gate -> the selected decoder(s) only. The image is encoded
once per volume by the shared encoder, exactly as in plain SAM-Med3D.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sammoe.errors import CheckpointError
from sammoe.model.decoder import MaskDecoder3D
from sammoe.model.gate import LOCAL_RADII, GatingNetwork, MaskSelector, gate_features, local_intensity_stats
from sammoe.model.sam3d import SamMed3D, backbone_fingerprint

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
        )
        self.selector = selector or MaskSelector()

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

    def _gate_input(self, image_embeddings, sparse, points, labels, image) -> torch.Tensor:
        features = gate_features(image_embeddings, sparse, points, labels, self.backbone.img_size)
        if not self.gate.local_radii:
            return features
        if image is None:
            raise ValueError(
                "this gate reads the image around the click (local_radii "
                f"{list(self.gate.local_radii)}): pass the encoded crop as image="
            )
        stats = local_intensity_stats(image, points, labels, self.gate.local_radii)
        return torch.cat([features, stats.to(features.dtype)], dim=1)

    def step(
        self,
        image_embeddings: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_prompt: torch.Tensor | None,
        route: torch.Tensor | int | None = None,
        image: torch.Tensor | None = None,
    ) -> MoEStep:
        """One interactive step. `route` forces experts (an index or one per sample): oracle routing and
        per-expert evaluation; otherwise the selector decides from the gate. `image` is the encoded crop
        (B or 1, 1, S, S, S), needed by a gate with `local_radii`."""
        prompt_encoder = self.backbone.prompt_encoder
        sparse, dense = prompt_encoder(
            points=None if points is None else (points, labels), boxes=None, masks=mask_prompt
        )
        gate_logits = self.gate(self._gate_input(image_embeddings, sparse, points, labels, image))
        probs = gate_logits.float().softmax(1)
        pe = prompt_encoder.get_dense_pe()
        bsz = image_embeddings.shape[0]
        if route is None and self.selector.mode == "soft":
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

    # ------------------------------------------------------------------------------------ gate weights
    def save_gate(self, path: str | Path) -> Path:
        """Gate weights (safetensors) with the expert order, selector and trunk fingerprint as metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {
            "expert_names": json.dumps(self.expert_names),
            "selector_mode": self.selector.mode,
            "tau": repr(float(self.selector.tau)),
            "backbone_fingerprint": backbone_fingerprint(self.backbone),
            "hidden_dim": str(self.gate.mlp[0].out_features),
            "local_radii": json.dumps(list(self.gate.local_radii)),
        }
        tmp = path.with_name(path.name + ".tmp")
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in self.gate.state_dict().items()}, str(tmp), meta
        )
        tmp.replace(path)
        return path

    def load_gate(self, path: str | Path) -> None:
        """Load a gate saved by `save_gate`; the experts and the trunk must be the ones it was trained over."""
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
            raise CheckpointError(
                f"{path}: not a readable gate file ({err}); retrain or re-copy it"
            ) from None
        try:
            names = json.loads(meta.get("expert_names", "[]"))
            hidden = int(meta.get("hidden_dim", self.gate.mlp[0].out_features))
            radii = tuple(int(r) for r in json.loads(meta.get("local_radii", "[]")))  # older gates: none
            selector = MaskSelector(meta.get("selector_mode", "threshold"), float(meta.get("tau", 0.5)))
        except (ValueError, TypeError) as err:
            raise CheckpointError(
                f"{path}: unreadable gate metadata ({err}); retrain or re-copy it"
            ) from None
        if not 1 <= hidden <= 65536 or len(radii) > 16 or any(not 0 < r <= 256 for r in radii):
            raise CheckpointError(
                f"{path}: gate metadata out of range (hidden_dim {hidden}, local_radii {list(radii)}); "
                "the file is damaged, retrain or re-copy it"
            )
        if names != self.expert_names:
            raise CheckpointError(
                f"{path}: gate was trained over experts {names} but the loaded experts are {self.expert_names}; "
                "install/select the same experts (SAMMOE_EXPERTS) or retrain the gate"
            )
        if meta.get("backbone_fingerprint") not in (None, backbone_fingerprint(self.backbone)):
            raise CheckpointError(
                f"{path}: gate was trained on a different backbone; load the matching checkpoint"
            )
        if hidden != self.gate.mlp[0].out_features or radii != self.gate.local_radii:
            old = self.gate  # the rebuilt gate keeps its device and train/eval mode
            self.gate = GatingNetwork(
                self.backbone.config.prompt_embed_dim, len(names), hidden, local_radii=radii
            )
            self.gate.to(old.norm.weight.device).train(old.training)
        try:
            self.gate.load_state_dict(state)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"{path}: gate weights do not match its metadata ({first}); retrain or re-copy it"
            ) from None
        self.selector = selector
