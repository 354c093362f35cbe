"""The decoder side of interaction: each target's clicks fed to the mask decoder one step at a time on its
crop's cached embedding, with the previous low-res logits as mask prompt (the official interactive loop).
Targets in one crop with the same number of clicks are decoded as one batch; a MoE routes each target at its
first step and keeps that expert for later clicks.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from sammoe.data.clicks_file import round_voxel
from sammoe.inference.roi_cache import EncodedRoi, TargetState
from sammoe.model.moe import SamMoE
from sammoe.model.sam3d import SamMed3D

STABILITY_OFFSET = 1.0  # logits: the masks at logit > +1 and > -1 are compared (SAM's stability score)


def stability_score(prob: np.ndarray, offset: float = STABILITY_OFFSET) -> float:
    """SAM's stability score of a crop's foreground probabilities ``prob`` (sigmoid of the logits): the IoU of
    the mask at logit > +``offset`` with the mask at logit > -``offset`` (the first lies inside the second).
    Near 1: the mask barely moves with the threshold, its boundary is sharp; near 0: most of it is uncertain.
    It needs no trained head (the shipped models' IoU head is untrained); 0 when nothing reaches -``offset``.
    """
    inner = np.count_nonzero(prob > 1.0 / (1.0 + math.exp(-offset)))
    outer = np.count_nonzero(prob > 1.0 / (1.0 + math.exp(offset)))
    return inner / outer if outer else 0.0


class ClickDecoder:
    """Decodes targets on encoded crops for one model. ``forced``: the index of an expert every target goes
    to (None: the model routes); ``decoder``: a mask decoder used instead of the model's own."""

    def __init__(
        self,
        model: SamMed3D | SamMoE,
        expert_names: Sequence[str],
        device: torch.device,
        amp: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.model, self.expert_names, self.device, self._amp = model, list(expert_names), device, amp
        self.backbone: SamMed3D = model.backbone if isinstance(model, SamMoE) else model
        self.size = int(self.backbone.img_size)
        self.low_size = int(self.backbone.low_res_size)
        self.forced: int | None = None
        self.decoder: torch.nn.Module | None = None

    def decode(
        self,
        entry: EncodedRoi,
        points: np.ndarray,
        labels: np.ndarray,
        low: torch.Tensor,
        route=None,
        probs=None,
    ):
        """One interactive step for a batch of targets in one ROI: -> (low-res logits, iou (B,), gate probs
        (B, K+1) | None, route). `route` forces an expert; with `probs` it is the targets' own, reused."""
        emb = entry.embedding
        pts = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        lab = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        emb = emb.expand(pts.shape[0], *emb.shape[1:])
        if route is None and self.forced is not None:
            route = self.forced
        with torch.inference_mode(), self._amp():
            if isinstance(self.model, SamMoE):
                out = self.model.step(emb, pts, lab, low.to(emb.dtype), route, entry.image, probs)
                return out.logits.float(), out.iou.float()[:, 0], out.probs.float(), out.route
            logits, iou = self.backbone.decode(emb, pts, lab, low.to(emb.dtype), decoder=self.decoder)
            return logits.float(), iou.float()[:, 0], None, None

    def routed(self, group: list[TargetState]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(route, probs) of targets a MoE has already routed (each target's first step decides), else
        Nones."""
        done = all(
            s.fed > 0 and s.probs is not None and s.route >= 0 and self.forced_for(s) in (None, s.route)
            for s in group
        )
        if not done or not isinstance(self.model, SamMoE):  # a route forced since then applies
            return None, None
        probs = torch.as_tensor(np.stack([s.probs for s in group]), device=self.device)
        return torch.tensor([s.route for s in group], device=self.device), probs

    def forced_for(self, state: TargetState) -> int | None:
        """The decoder a target must use: its own chosen one, else the one forced for all (None: routed)."""
        return self.forced if state.chosen is None else state.chosen

    def zeros_low(self, n: int) -> torch.Tensor:
        return torch.zeros(n, 1, *(self.low_size,) * 3, device=self.device)

    def upsample(self, low: torch.Tensor) -> np.ndarray:
        return torch.sigmoid(SamMed3D.upsample(low.float(), self.size))[:, 0].cpu().numpy()

    def _roi_clicks(self, entry: EncodedRoi, state: TargetState, upto: int) -> np.ndarray:
        return round_voxel(entry.roi.input_to_roi(state.clicks[:upto])).astype(np.float32)

    def run(self, entry: EncodedRoi, states: list[TargetState]) -> None:
        """Feed every state's unconsumed clicks, one step per click, batching states with equal click
        counts and the same forced decoder (a target's own choice, else the one forced for all). Leaves each
        state's low-res logits (``upsample`` makes the crop's probabilities of them)."""
        while True:
            active = [s for s in states if s.fed < len(s.clicks)]
            if not active:
                break
            groups: dict[tuple[int, int | None], list[TargetState]] = {}
            for s in active:
                groups.setdefault((s.fed + 1, self.forced_for(s)), []).append(s)
            for (count, forced), group in groups.items():
                points = np.stack([self._roi_clicks(entry, s, count) for s in group])
                labels = np.stack([s.labels[:count] for s in group])
                low = torch.cat([self.zeros_low(1) if s.low is None else s.low for s in group])
                route, probs = self.routed(group)
                if route is None and forced is not None:
                    route = torch.full((len(group),), forced, device=self.device)
                logits, iou, probs, route = self.decode(entry, points, labels, low, route, probs)
                for b, s in enumerate(group):
                    s.low = logits[b : b + 1]
                    s.iou = float(iou[b])
                    s.probs = None if probs is None else probs[b].cpu().numpy()
                    s.route = 0 if route is None else int(route[b])
                    s.fed = count
