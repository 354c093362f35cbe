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
- ``center_click_from_error(pred, gt) -> (coords, labels)``: deterministic: the voxel deepest inside the
  larger error region (Euclidean distance transform, the volume border counts as boundary; RITM style);
  positive if that region is FN. Runs the EDT on the CPU (scipy) and returns tensors on the input's device.
- ``ClickProtocol(gt, seed=233, strategy="random" | "center")``: the official evaluation protocol for one
  case: ``next(pred=None)`` returns ALL clicks so far (B, n, 3) and (B, n) after adding one; the first click
  (``pred=None``: empty prediction) is a random foreground voxel (``"center"``: the foreground's deepest voxel).
- ``run_click_protocol(gt, predict, num_clicks=(1, 3, 5, 10), seed=233, strategy="random") -> dict``:
  drives ``predict(coords, labels) -> bool mask`` through the protocol and returns {n_clicks: mask}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
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


def _deepest(mask: np.ndarray) -> tuple[float, np.ndarray | None]:
    from scipy import ndimage

    if not mask.any():
        return 0.0, None
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
    flat = int(np.argmax(dist))
    return float(dist.flat[flat]), np.array(np.unravel_index(flat, mask.shape))


def center_click_from_error(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic click at the centre (max EDT) of the larger of FN and FP; ties -> FN, first voxel."""
    p, g = _as_batch_masks(pred, gt)
    p_np, g_np = p.cpu().numpy(), g.cpu().numpy()
    coords = torch.zeros(p.shape[0], 1, 3, dtype=torch.float32)
    labels = torch.full((p.shape[0], 1), -1, dtype=torch.long)
    for b in range(p.shape[0]):
        d_fn, at_fn = _deepest(g_np[b] & ~p_np[b])
        d_fp, at_fp = _deepest(p_np[b] & ~g_np[b])
        if at_fn is None and at_fp is None:
            d_fn, at_fn = _deepest(g_np[b])  # no error: click the foreground's centre (or nothing)
        if at_fn is not None and d_fn >= d_fp:
            coords[b, 0], labels[b, 0] = torch.from_numpy(at_fn), 1
        elif at_fp is not None:
            coords[b, 0], labels[b, 0] = torch.from_numpy(at_fp), 0
    return coords.to(p.device), labels.to(p.device)


class ClickProtocol:
    """Evaluation clicks for one case (batch of targets), seeded per case (official: 233).

    ``strategy="random"``: official, uniform over the error region; ``"center"``: deterministic EDT centre.
    Every ``next`` adds one click and returns all clicks so far (the official loop feeds all of them).
    """

    def __init__(self, gt: torch.Tensor, seed: int = EVAL_SEED, strategy: str = "random") -> None:
        if strategy not in ("random", "center"):
            raise ValueError(f"strategy must be 'random' or 'center', got {strategy!r}")
        self.gt = gt
        self.strategy = strategy
        self.generator = torch.Generator(device=gt.device).manual_seed(int(seed))
        self.coords: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None

    def next(self, pred: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if pred is None:
            pred = torch.zeros_like(self.gt, dtype=torch.bool)
        if self.strategy == "random":
            c, lab = next_click_from_error(pred, self.gt, self.generator)
        else:
            c, lab = center_click_from_error(pred, self.gt)
        self.coords = c if self.coords is None else torch.cat([self.coords, c], 1)
        self.labels = lab if self.labels is None else torch.cat([self.labels, lab], 1)
        return self.coords, self.labels


def run_click_protocol(
    gt: torch.Tensor,
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_clicks: Sequence[int] = (1, 3, 5, 10),
    seed: int = EVAL_SEED,
    strategy: str = "random",
) -> dict[int, torch.Tensor]:
    """Run the evaluation loop: click, ``predict(all_coords, all_labels)`` -> mask, next click from its errors.

    Returns the predicted mask after each click count in ``num_clicks``. ``predict`` keeps any model state
    (e.g. the previous low-res logits as mask prompt) itself.
    """
    protocol = ClickProtocol(gt, seed=seed, strategy=strategy)
    wanted = sorted(set(int(n) for n in num_clicks))
    out: dict[int, torch.Tensor] = {}
    pred = None
    for n in range(1, wanted[-1] + 1):
        coords, labels = protocol.next(pred)
        pred = predict(coords, labels)
        if n in wanted:
            out[n] = pred
    return out
