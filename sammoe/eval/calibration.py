"""Choosing the selector threshold tau from validation rows: pure arithmetic on `EvalRow`s, no model.

The chosen tau has the best class-average Dice among the thresholds that keep every general class within a
Dice budget of the foundation and let experts claim few background clicks; the candidates' rows carry the
model name ``moe@<tau>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sammoe.eval.results import GENERAL, EvalRow, class_means, nanmean

FOUNDATION = "foundation"  # the model name of the foundation decoder's rows
BACKGROUND = "background"  # the class name of clicks on unlabelled voxels, which must stay with it


@dataclass(frozen=True)
class TauBudget:
    """What a threshold may cost: the worst general class's Dice drop against the foundation (0-1) and the
    share of background clicks an expert claims."""

    max_general_drop: float = 0.01
    max_background_claims: float = 0.02


def background_claims(rows: Sequence[EvalRow], model: str) -> float | None:
    """Share of `model`'s background clicks (first click) routed to an expert; None without any."""
    first = [
        r for r in rows if r.model == model and r.class_name == BACKGROUND and r.routed_expert is not None
    ]
    if not first:
        return None
    n = min(r.n_clicks for r in first)
    routed = [r.routed_expert != FOUNDATION for r in first if r.n_clicks == n]
    return sum(routed) / len(routed)


def choose_tau(
    rows: Sequence[EvalRow],
    grid: Sequence[float],
    class_group: Callable[[str], str],
    budget: TauBudget,
) -> tuple[float | None, dict[str, dict[str, float]]]:
    """The threshold of `grid` with the best class-average Dice within `budget` (the middle one when several
    tie; else the one that loses least on the general classes), and the search table. None when no row
    carries a candidate of the grid."""
    table = class_means([r for r in rows if r.class_name != BACKGROUND], "dice")
    base = table.get(FOUNDATION, {})
    general = [c for c in base if class_group(c) == GENERAL]
    search: dict[str, dict[str, float]] = {}
    grid = [t for t in grid if f"moe@{t:g}" in table]
    if not grid:
        return None, search
    for tau in grid:
        per_class = table[f"moe@{tau:g}"]
        average = nanmean(nanmean(by_k.values()) for by_k in per_class.values())
        # The worst general class, not their mean: the lesion expert's false claims all fall on the
        # liver, and 4 Dice points there average to 1 over four general classes.
        drops = [
            nanmean(base[c][k] - per_class[c][k] for k in base[c] if k in per_class[c])
            for c in general
            if c in per_class
        ]
        drops = [d for d in drops if not math.isnan(d)]
        search[f"{tau:g}"] = {"average_dice": average, "general_drop": max(drops) if drops else 0.0}
        claims = background_claims(rows, f"moe@{tau:g}")
        if claims is not None:
            search[f"{tau:g}"]["background_claims"] = claims
    allowed = [
        t
        for t in grid
        if search[f"{t:g}"]["general_drop"] <= budget.max_general_drop
        and search[f"{t:g}"].get("background_claims", 0.0) <= budget.max_background_claims
    ]

    def avg(t: float) -> float:
        value = search[f"{t:g}"]["average_dice"]
        return -1.0 if math.isnan(value) else value

    if allowed:
        # Thresholds often tie (identical routing on validation): take the middle of the best ones,
        # the tau with the widest margin on both sides, rather than an end of the plateau.
        top = max(avg(t) for t in allowed)
        tied = [t for t in allowed if avg(t) >= top - 1e-9]
        return tied[len(tied) // 2], search
    return min(grid, key=lambda t: (search[f"{t:g}"]["general_drop"], -avg(t))), search
