"""The README's main job, shrunk: `sammoe demo --fast` runs the whole pipeline and reports what it
measured."""

from __future__ import annotations

import json
import math

import pytest

from sammoe.assets import FOUNDATION_TINY
from sammoe.eval.report import build_report, read_rows_csv
from sammoe.loading import load_backbone
from sammoe.model.sam3d import backbone_fingerprint
from sammoe.plugins.discovery import discover


def _usable_experts() -> list[str]:
    if not FOUNDATION_TINY.is_file():
        return []
    fingerprint = backbone_fingerprint(load_backbone(FOUNDATION_TINY, "tiny"))
    return [r.name for r in discover(backbone_fingerprint=fingerprint) if r.status == "ok"]


pytestmark = pytest.mark.slow  # the whole demo pipeline (gate training + two evaluations): `make test-all`


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    experts = _usable_experts()
    if len(experts) < 2:
        pytest.fail("the shipped foundation model and two example experts must be installed (make install)")
    from sammoe.cli.demo import main

    out = tmp_path_factory.mktemp("demo")
    assert main(["--fast", "--out", str(out), "--seed", "3"]) == 0
    return out, experts


def test_report_has_the_promised_shape(demo_run):
    out, experts = demo_run
    report = json.loads((out / "report.json").read_text())
    assert {"foundation", "moe", "oracle", *experts} <= set(report["models"])
    classes = set(report["classes"])
    assert {"liver", "spinal_cord", "textured_lesion"} <= classes
    for model, per_class in report["models"].items():
        assert set(per_class) == classes, model
        for cls, by_clicks in per_class.items():
            assert set(by_clicks) == {"1", "5"}, (model, cls)
            for dice in by_clicks.values():
                assert dice is None or 0.0 <= dice <= 1.0
    assert "through the Predictor" in report["protocol"]
    # the official box-crop protocol follows, over the same models and classes
    assert set(report["official_bbox"]["models"]) == set(report["models"])
    assert set(report["official_bbox"]["classes"]) == classes
    # background clicks were routed on every test case (2 per case, 2 fast test cases): a share of 4 clicks
    assert report["background_claims"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert "synthetic demonstration" in report["notes"]
    assert report["colin27"]["models"]["foundation"]
    assert (out / "report.md").read_text().count("|") > 20
    assert (out / "dice.png").stat().st_size > 1000
    assert list((out / "runs" / "gate").rglob("*.wandb")), "the gate run is logged to W&B (offline)"
    # the experts added one at a time, routed by their own routers: each step lists the experts so far
    steps = report["composition"]["steps"]
    assert [s["experts"] for s in steps] == [sorted(experts)[: k + 1] for k in range(len(steps))]
    assert steps[0]["other_routes_changed"] is None and all(
        s["other_routes_changed"] is not None for s in steps[1:]
    )
    assert "Experts added one at a time" in (out / "report.md").read_text()


def test_every_number_comes_from_the_run(demo_run):
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    rows = read_rows_csv(out / "runs" / "evaluate" / "test" / "results.csv")
    recomputed = build_report(rows)
    assert recomputed["models"] == report["models"]
    assert recomputed["routing_accuracy"] == report["routing_accuracy"]
    first = [r for r in rows if r.model == "moe" and r.n_clicks == 1]
    assert first and all(r.routed_expert is not None for r in first)
    by_rows = sum(r.routed_expert == r.oracle_expert for r in first) / len(first)
    assert report["routing_accuracy"] == pytest.approx(by_rows)
    by_hand = [
        r.dice for r in rows if r.model == "foundation" and r.class_name == "liver" and r.n_clicks == 1
    ]
    by_hand = [d for d in by_hand if not math.isnan(d)]
    assert report["models"]["foundation"]["liver"]["1"] == pytest.approx(sum(by_hand) / len(by_hand))


def test_the_claims_printed_are_the_ones_the_numbers_give(demo_run):
    """Each claim's verdict in report.json is recomputed from the run's rows: the demo cannot say "yes" when
    the MoE trails a single model by more than a point on some class."""
    from sammoe.eval.claims import moe_claims

    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    recomputed = build_report(read_rows_csv(out / "runs" / "evaluate" / "test" / "results.csv"))
    for k in ("1", "5"):
        for claim in moe_claims(recomputed, k):
            assert claim.text in report["claims"]
            assert report["claims_hold"][claim.name] in (True, False)
