"""Click simulation on torch tensors: batched, seeded through ``torch.Generator``, device-agnostic.

Conventions: masks are (B, D, H, W) or (B, 1, D, H, W); non-bool masks are read as ``> 0.5``.
Clicks are voxel indices in tensor-axis order (as ``torch.argwhere`` gives them), float32, shape (B, N, 3);
labels are long, shape (B, N): 1 positive (missed foreground), 0 negative (false positive), -1 "no click"
(the padding label SAM's prompt encoder ignores), used only when there is nothing to click: empty ground
truth and empty prediction.

Public API
----------
- ``next_click_from_error(pred, gt, generator=None) -> (coords (B,1,3), labels (B,1))``: one voxel drawn
  uniformly from the error region FN | FP (FN -> 1, FP -> 0); empty error region -> a uniform foreground voxel
  labelled 1 (the official training/eval rule); empty GT and empty prediction -> label -1 at (0, 0, 0).

The click loops that use it live in ``sammoe.interact.rollout`` (training and evaluation on crops) and
``sammoe.inference.protocol`` (evaluation through the Predictor).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

EVAL_SEED = 233


def _as_batch_masks(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    def norm(x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            if x.shape[1] != 1:
                raise ValueError(f"expected one channel, got shape {tuple(x.shape)}")
            x = x[:, 0]
        if x.dim() != 4:
            raise ValueError(f"expected (B, D, H, W) or (B, 1, D, H, W), got {tuple(x.shape)}")
        if x.dtype == torch.bool:
            return x
        return x > 0.5 if x.is_floating_point() else x != 0

    p, g = norm(pred), norm(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(p.shape)} and ground truth {tuple(g.shape)} differ in shape")
    return p, g.to(p.device)


def _unravel(flat: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    d, h, w = shape
    return torch.stack([flat // (h * w), (flat // w) % h, flat % w], dim=-1)


def next_click_from_error(
    pred: torch.Tensor, gt: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per batch element, uniform over FN | FP (see module docstring for the empty cases)."""
    p, g = _as_batch_masks(pred, gt)
    batch, spatial = p.shape[0], p.shape[1:]
    p, g = p.reshape(batch, -1), g.reshape(batch, -1)
    fn = g & ~p
    err = fn | (p & ~g)
    has_err = err.any(1)
    cand = torch.where(has_err[:, None], err, g)
    cum = cand.to(torch.int32).cumsum(1, dtype=torch.int32)
    count = cum[:, -1].to(torch.int64)
    # Only B random numbers: the draw does not depend on the volume size or the device.
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float64).to(p.device)
    k = torch.minimum((u * count).to(torch.int64), (count - 1).clamp(min=0))
    idx = torch.searchsorted(cum, (k + 1).to(torch.int32)[:, None]).squeeze(1).clamp(max=cum.shape[1] - 1)
    coords = _unravel(idx, spatial).to(torch.float32)
    labels = torch.where(has_err, fn.gather(1, idx[:, None]).squeeze(1).long(), torch.ones_like(idx))
    empty = count == 0
    labels = torch.where(empty, torch.full_like(labels, -1), labels)
    coords = torch.where(empty[:, None], torch.zeros_like(coords), coords)
    return coords[:, None, :], labels[:, None]
