"""An expert's own router: does this first click name a target of the expert's task? (one-vs-rest)

The joint gate of SAM-Med3D-MoE is one classifier over a fixed set of experts, so installing an expert means
retraining it on every task's data. A router belongs to one expert: it is trained with the trunk frozen on
that expert's task (positives) against general structures and background (negatives), calibrated by a
temperature, and it carries its own threshold. Routers of independently published experts compose: the
expert whose calibrated probability is highest among those at or above their own threshold wins, else the
foundation decoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from sammoe.model.gate import LOCAL_RADII, RoutingHead


class ExpertRouter(RoutingHead):
    """One logit from the routing features (``sammoe.model.gate.routing_features``); the temperature and
    threshold are buffers, so they travel with the weights."""

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        local_radii: Sequence[int] = LOCAL_RADII,
        texture: bool = True,
        robust_texture: bool = False,
        patch_radius: int = 0,
        trunk: bool = True,
    ) -> None:
        super().__init__(
            embed_dim, 1, hidden_dim, dropout, local_radii, texture, robust_texture, patch_radius, trunk
        )
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("threshold", torch.full((), 0.5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B,) uncalibrated logits (what training optimises)."""
        return super().forward(features).squeeze(1)

    def probability(self, features: torch.Tensor) -> torch.Tensor:
        """(B,) calibrated probability that the click names a target of this expert's task."""
        return torch.sigmoid(self(features).float() / self.temperature.float())


def route_by_routers(probs: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(B, K) calibrated router probabilities and (K,) their thresholds -> (B,) route (0 = foundation,
    k = expert k-1 of the columns): the most probable expert among those at or above their threshold."""
    claims = probs >= thresholds.to(probs.device)
    masked = torch.where(claims, probs, torch.full_like(probs, -1.0))
    best_p, best_k = masked.max(1)
    return torch.where(best_p >= 0, best_k + 1, torch.zeros_like(best_k))


def router_summary(routers: Mapping[str, ExpertRouter]) -> dict[str, dict[str, float]]:
    """Each router's threshold and temperature (for reports)."""
    return {
        name: {"threshold": float(r.threshold), "temperature": float(r.temperature)}
        for name, r in routers.items()
    }
