"""The claims of SAM-Med3D-MoE, checked on a report: is the MoE as good as each single model on every class,
better on average, routing right, and do experts added one at a time leave the other targets' routes alone?

Each claim is measured, never assumed: ``Claim.holds`` is what the numbers say and ``text`` says it in one
line with the numbers. ``sammoe demo`` prints them; tests assert them on the demo's report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sammoe.eval.results import EvalRow, nanmean

MAX_CLASS_GAP = 0.01  # the MoE may trail the best single model on a class by at most 1 Dice point
MAX_BACKGROUND_CLAIMS = 0.02  # share of clicks on unlabelled voxels an expert may take


@dataclass(frozen=True)
class Claim:
    name: str
    holds: bool
    text: str


def moe_claims(report: dict[str, Any], k: str) -> list[Claim]:
    """At ``k`` clicks: the MoE within 1 point of the best single model on every class, and its class
    average above every single model's (``report`` as ``eval.report.build_report`` makes it)."""
    table = report["models"]
    singles = [m for m in table if m not in ("moe", "oracle")]
    claims = []
    gaps = []
    for cls in report["classes"]:
        scores = [table[m][cls].get(k) for m in singles if table[m].get(cls, {}).get(k) is not None]
        moe = table["moe"].get(cls, {}).get(k)
        if scores and moe is not None:
            gaps.append(max(scores) - moe)
    if gaps:
        worst = max(gaps)
        holds = worst <= MAX_CLASS_GAP
        claims.append(
            Claim(
                f"moe_within_1_point_on_every_class@{k}",
                holds,
                f"MoE within 1 Dice point of the best single model on every class at {k} click(s): "
                f"{'yes' if holds else 'no'} (largest gap {100 * worst:+.1f} points)",
            )
        )
    average = report["average"]
    moe_avg = average["moe"]["all"].get(k)
    best_single = max((average[m]["all"].get(k) or -math.inf for m in singles), default=None)
    if moe_avg is not None and best_single is not None:
        holds = moe_avg > best_single
        claims.append(
            Claim(
                f"moe_average_above_every_single_model@{k}",
                holds,
                f"MoE average above every single model at {k} click(s): {'yes' if holds else 'no'} "
                f"(MoE {moe_avg:.3f}, best single {best_single:.3f})",
            )
        )
    return claims


def routing_claims(report: dict[str, Any], background: float | None) -> list[Claim]:
    """Routing accuracy (stated, no bar) and the share of background clicks an expert took (at most 2%)."""
    claims = []
    if report.get("routing_accuracy") is not None:
        accuracy = float(report["routing_accuracy"])
        claims.append(
            Claim(
                "routing_accuracy",
                True,
                f"Routing accuracy (first click of every target): {accuracy:.3f}",
            )
        )
    if background is not None:
        holds = background <= MAX_BACKGROUND_CLAIMS
        claims.append(
            Claim(
                "background_stays_with_the_foundation",
                holds,
                "Background clicks (unlabelled voxels) sent to an expert at most 2%: "
                f"{'yes' if holds else 'no'} ({100 * background:.1f}%)",
            )
        )
    return claims


def composition_steps(steps: Sequence[tuple[list[str], Sequence[EvalRow]]]) -> list[dict[str, Any]]:
    """Experts added one at a time (each step: the experts so far and its rows at 1 click): routing accuracy
    after each step, and the share of the other targets (general classes, earlier experts' tasks) whose route
    the added expert changed."""
    out: list[dict[str, Any]] = []
    previous: dict | None = None
    for experts, rows in steps:
        first = {(r.case_id, r.class_name): r for r in rows if r.model == "moe" and r.n_clicks == 1}
        now = {key: r.routed_expert for key, r in first.items()}
        moe = [r for r in rows if r.model == "moe" and r.n_clicks == 1]
        accuracy = sum(r.routed_expert == r.oracle_expert for r in moe) / max(len(moe), 1)
        changed = None
        if previous is not None:  # the added expert's own targets are left out
            others = [key for key in now if key in previous and first[key].oracle_expert != experts[-1]]
            changed = sum(now[key] != previous[key] for key in others) / max(len(others), 1)
        out.append({"experts": list(experts), "routing_accuracy": accuracy, "other_routes_changed": changed})
        previous = now
    return out


def class_dice(rows: Sequence[EvalRow], model: str, class_name: str) -> float:
    """Mean Dice of ``model`` on ``class_name`` after 1 click."""
    return nanmean(
        r.dice for r in rows if r.model == model and r.class_name == class_name and r.n_clicks == 1
    )
