"""The evaluation click protocol run through the Predictor: the ground-truth-free path `sammoe segment` runs.

For one target on its original grid, with one torch generator seeded ``seed`` (official: 233 per target):
the first click is a voxel of the target drawn uniformly (``interact.roi.seeded_first_click`` draws the same
one), the Predictor crops around it and segments exactly as for a user (sliding window included); each later
click is drawn uniformly from the error region of the Predictor's own previous mask within the target's crop
(where a refinement click can go, as in the official protocol's crop) and fed through ``add_click``. Dice
and NSD are scored on the original grid after each requested click count.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sammoe.data.clicks import next_click_from_error
from sammoe.errors import DataError
from sammoe.eval.metrics import dice, dice_nsd


@dataclass
class TargetScores:
    """One target through the Predictor: per click count Dice/NSD, and what routed it."""

    dice: dict[int, float]
    nsd: dict[int, float]
    expert: str
    gate: dict[str, float] | None
    clicks: list[tuple[list[int], int]] = field(default_factory=list)  # (input voxel, 1/0) in order
    mask: np.ndarray | None = None  # the mask after the last click, input grid


def _to_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))[None]


def evaluate_target(
    predictor: Any,
    target: np.ndarray,
    spacing: Sequence[float],
    *,
    click_counts: Sequence[int] = (1, 3, 5, 10),
    seed: int = 233,
    tolerance_mm: float | None = 1.0,
    name: str = "target",
    first_click: Sequence[int] | None = None,
    memo: dict[bytes, tuple[float, float]] | None = None,
) -> TargetScores | None:
    """Run the protocol for one target (bool mask on the Predictor's current image); None when it is empty.

    ``predictor`` is a ``sammoe.inference.predictor.Predictor`` with the image set; its ``route``/``decoder``
    choose the model (None: the model's own gate). ``tolerance_mm`` None skips NSD (NaN). ``first_click``
    (input voxel indices) replaces the drawn first click (the generator still makes that draw, so later clicks
    do not move). ``memo``, shared by the models evaluated on this one target, scores a mask that another
    model already produced without computing it again (a MoE that picks the foundation decoder gives its
    masks, and NSD is the slow part).
    """
    from sammoe.inference.predictor import Target

    wanted = sorted({int(k) for k in click_counts})
    gt = _to_tensor(target)
    generator = torch.Generator().manual_seed(int(seed))
    coords, labels = next_click_from_error(torch.zeros_like(gt), gt, generator)
    if int(labels[0, 0]) != 1:
        return None
    first = coords[0, 0].long().tolist() if first_click is None else [int(v) for v in first_click]
    seg = predictor.predict(Target([first], [1], name))
    result = seg.targets[0]
    clicks = [(first, 1)]
    footprint = _to_tensor(predictor.crop_footprint(0))
    gt_in_crop = gt & footprint
    scores = TargetScores({}, {}, result.expert, result.gate, clicks)
    mask = result.mask
    for n in range(1, wanted[-1] + 1):
        if n > 1:
            pred = _to_tensor(mask) & footprint
            coords, labels = next_click_from_error(pred, gt_in_crop, generator)
            point = coords[0, 0].long().tolist()
            positive = int(labels[0, 0]) == 1
            clicked = False
            if int(labels[0, 0]) >= 0:  # -1: nothing left to click inside the crop
                try:
                    mask = predictor.add_click(0, point, positive=positive).mask
                    clicked = True
                except DataError:  # a voxel on the crop's rounding edge: add_click refuses it, the mask stays
                    pass
            clicks.append((point, int(positive)) if clicked else ([-1, -1, -1], -1))
        if n in wanted:
            scores.dice[n], scores.nsd[n] = _metrics(mask, target, spacing, tolerance_mm, memo)
    scores.mask = mask
    return scores


def _metrics(
    mask: np.ndarray,
    target: np.ndarray,
    spacing: Sequence[float],
    tolerance_mm: float | None,
    memo: dict[bytes, tuple[float, float]] | None,
) -> tuple[float, float]:
    """(Dice, NSD or NaN) of a mask against the target, looked up in ``memo`` by the mask's content."""
    key = None
    if memo is not None:
        bits = np.packbits(np.asarray(mask, dtype=bool))
        key = hashlib.blake2b(bits.tobytes(), digest_size=16).digest() + repr(np.shape(mask)).encode()
        if key in memo:
            return memo[key]
    if tolerance_mm is None:
        value = dice(mask, target), math.nan
    else:
        value = dice_nsd(mask, target, spacing, tolerance_mm)
    if key is not None:
        memo[key] = value
    return value
