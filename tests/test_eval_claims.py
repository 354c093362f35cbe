"""The demo's claim (the MoE as good as each single model on every class, better on average, background clicks
left to the foundation), checked on reports built from rows: it must fail when the numbers say no."""

from __future__ import annotations

import pytest

from sammoe.eval.claims import composition_steps, moe_claims, routing_claims
from sammoe.eval.report import build_report
from sammoe.eval.results import EvalRow

CLASSES = {"liver": "general", "spinal_cord": "task"}


def _rows(model: str, liver: float, cord: float, expert: str | None = None) -> list[EvalRow]:
    return [
        EvalRow(model, f"case{i}", cls, group, 1, value, routed_expert=expert, oracle_expert=expert)
        for i in range(3)
        for (cls, group), value in zip(CLASSES.items(), (liver, cord))
    ]


def _report(moe_liver: float, moe_cord: float) -> dict:
    rows = (
        _rows("foundation", 0.80, 0.10)
        + _rows("spinal_cord", 0.05, 0.60)
        + _rows("moe", moe_liver, moe_cord)
        + _rows("oracle", 0.80, 0.60)
    )
    return build_report(rows, foundation="foundation", moe="moe")


def _holds(report: dict) -> dict[str, bool]:
    return {c.name.removesuffix("@1"): c.holds for c in moe_claims(report, "1")}


def test_the_claim_holds_when_the_moe_matches_the_best_model_on_every_class():
    assert _holds(_report(0.80, 0.595)) == {
        "moe_within_1_point_on_every_class": True,
        "moe_average_above_every_single_model": True,
    }


@pytest.mark.parametrize(("liver", "cord"), [(0.78, 0.60), (0.80, 0.55)])
def test_the_claim_fails_when_one_class_loses_more_than_a_point(liver, cord):
    holds = _holds(_report(liver, cord))
    assert holds["moe_within_1_point_on_every_class"] is False
    text = moe_claims(_report(liver, cord), "1")[0].text
    assert ": no (largest gap" in text


def test_the_average_claim_fails_when_a_single_model_is_as_good_on_average():
    assert _holds(_report(0.10, 0.10))["moe_average_above_every_single_model"] is False


def test_background_clicks_taken_by_an_expert_break_the_routing_claim():
    report = _report(0.8, 0.6)
    assert [c.holds for c in routing_claims(report, 0.02) if c.name.startswith("background")] == [True]
    assert [c.holds for c in routing_claims(report, 0.25) if c.name.startswith("background")] == [False]


def test_adding_an_expert_counts_the_routes_it_changed_on_other_targets():
    def step(routes: dict[str, str]) -> list[EvalRow]:
        owner = {"liver": "foundation", "spinal_cord": "spinal_cord", "lesion": "lesion"}
        return [
            EvalRow("moe", "c0", cls, "task", 1, 0.5, routed_expert=routed, oracle_expert=owner[cls])
            for cls, routed in routes.items()
        ]

    first = step({"liver": "foundation", "spinal_cord": "spinal_cord", "lesion": "foundation"})
    second = step({"liver": "lesion", "spinal_cord": "spinal_cord", "lesion": "lesion"})
    steps = composition_steps([(["spinal_cord"], first), (["spinal_cord", "lesion"], second)])
    assert steps[0]["other_routes_changed"] is None and steps[0]["routing_accuracy"] == pytest.approx(2 / 3)
    # the lesion expert took the liver: one of the two other targets changed route
    assert steps[1]["other_routes_changed"] == pytest.approx(0.5)
