"""Gating network over experts and the threshold-driven mask selector (SAM-Med3D-MoE).

The gate reads what the frozen trunk already computed (image embedding and prompt tokens) and returns a
confidence per expert: index 0 is the foundation decoder E0, 1..K the task experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SELECTOR_MODES = ("threshold", "top1", "soft", "oracle")


def gate_features(
    image_embeddings: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    image_size: int,
) -> torch.Tensor:
    """(B, 3C): pooled image embedding, the embedding at the positive clicks, mean click token.

    The two click features are zero when a step has no clicks (the point-free training iterations).
    """
    bsz, channels = image_embeddings.shape[:2]
    pooled = image_embeddings.mean(dim=(2, 3, 4))
    if points is None or points.shape[1] == 0:
        zeros = pooled.new_zeros(bsz, channels)
        return torch.cat([pooled, zeros, zeros], dim=1)
    grid = image_embeddings.shape[2]
    cells = (points.float() * grid / image_size).long().clamp(0, grid - 1)  # (B, N, 3)
    flat = image_embeddings.flatten(2)  # (B, C, g^3)
    index = (cells[..., 0] * grid + cells[..., 1]) * grid + cells[..., 2]
    at_clicks = torch.gather(flat, 2, index.unsqueeze(1).expand(-1, channels, -1))  # (B, C, N)
    valid = (labels >= 0).to(flat.dtype)  # (B, N)
    count = valid.sum(1, keepdim=True).clamp_min(1)
    # What the target looks like: the embedding at the positive clicks (negative clicks mark what it is
    # not, often the neighbouring organ); all valid clicks where a sample has no positive one.
    positive = (labels == 1).to(flat.dtype)
    weight = torch.where(positive.sum(1, keepdim=True) > 0, positive, valid)
    sampled = (at_clicks * weight.unsqueeze(1)).sum(2) / weight.sum(1, keepdim=True).clamp_min(1)
    # Click tokens: the first N sparse tokens (the last one is the official padding point).
    tokens = (sparse_embeddings[:, : points.shape[1]] * valid.unsqueeze(-1)).sum(1) / count
    return torch.cat([pooled, sampled, tokens], dim=1)


class GatingNetwork(nn.Module):
    """MLP from trunk features to logits over K+1 experts."""

    def __init__(self, embed_dim: int, num_experts: int, hidden_dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.norm = nn.LayerNorm(3 * embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(3 * embed_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_experts),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.norm(features))


@dataclass
class MaskSelector:
    """Turns gate probabilities into a routing decision.

    threshold: the most confident specialist if its probability >= tau, else E0 (the foundation);
    top1: argmax; soft: probability-weighted logits of every expert; oracle: the route given by the caller.
    """

    mode: str = "threshold"
    tau: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in SELECTOR_MODES:
            raise ValueError(
                f"selector mode {self.mode!r} unknown; choose one of {', '.join(SELECTOR_MODES)}"
            )

    def route(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, K+1) probabilities -> (B,) expert index (0 = foundation)."""
        if self.mode == "top1" or probs.shape[1] == 1:
            return probs.argmax(1)
        best_p, best_k = probs[:, 1:].max(1)
        return torch.where(best_p >= self.tau, best_k + 1, torch.zeros_like(best_k))
