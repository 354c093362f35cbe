"""Run-directory reports: results.csv, report.json (issue 7 shape), report.md, dice.png."""

import json
import math
import random
import statistics

import numpy as np
import pytest

from sammoe.eval import GENERAL, TASK, EvalRow, build_report, read_rows_csv, report_table, write_report

CLASSES = {"liver": GENERAL, "kidney": GENERAL, "lesion_a": TASK, "lesion_b": TASK}
EXPERT_OF = {"lesion_a": "expert_a", "lesion_b": "expert_b"}
MODELS = ["foundation", "expert_a", "expert_b", "moe", "oracle"]


def make_rows(seed, cases=3, clicks=(1, 5)):
    rng = random.Random(seed)
    rows = []
    for m in MODELS:
        for case in range(cases):
            for cls, group in CLASSES.items():
                for k in clicks:
                    oracle = EXPERT_OF.get(cls, "foundation")
                    routed = None
                    if m in ("moe", "oracle"):
                        routed = oracle if (m == "oracle" or rng.random() < 0.8) else "foundation"
                    empty = cls == "lesion_b" and case == 0  # empty GT & empty prediction
                    rows.append(
                        EvalRow(
                            model=m,
                            case_id=f"case{case}",
                            class_name=cls,
                            class_group=group,
                            n_clicks=k,
                            dice=math.nan if empty else rng.random(),
                            nsd=math.nan if empty else rng.random(),
                            routed_expert=routed,
                            oracle_expert=oracle if routed else None,
                        )
                    )
    return rows


def mean(values):
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def test_write_report_files_and_json_shape(tmp_path):
    rows = make_rows(0)
    half = len(rows) // 2
    # two "ranks" with an overlapping (padded) row
    files = write_report([*rows[:half], *rows[half - 1 :]], tmp_path / "run", notes="Synthetic demo.")
    for p in (files.csv, files.json, files.markdown, files.chart):
        assert p.exists() and p.parent == tmp_path / "run"
    assert not list((tmp_path / "run").glob(".*.tmp"))

    report = json.loads(files.json.read_text())
    assert list(report["models"]) == MODELS
    assert report["click_counts"] == [1, 5]
    assert report["classes"] == CLASSES
    for m in MODELS:
        assert set(report["models"][m]) == set(CLASSES)
        for cls in CLASSES:
            assert set(report["models"][m][cls]) == {"1", "5"}
            for k in (1, 5):
                # every number is the nan-aware mean of the rows passed in
                expected = mean([r.dice for r in rows if (r.model, r.class_name, r.n_clicks) == (m, cls, k)])
                got = report["models"][m][cls][str(k)]
                assert got == pytest.approx(expected)
                assert 0.0 <= got <= 1.0
                expected_nsd = mean(
                    [r.nsd for r in rows if (r.model, r.class_name, r.n_clicks) == (m, cls, k)]
                )
                assert report["nsd"][m][cls][str(k)] == pytest.approx(expected_nsd)
    routed = [r for r in rows if r.model == "moe"]
    assert report["routing_accuracy"] == pytest.approx(
        sum(r.routed_expert == r.oracle_expert for r in routed) / len(routed)
    )
    assert report["routing_accuracy_by_model"]["oracle"] == 1.0
    assert set(report["forgetting"]) == set(MODELS) - {"foundation"}
    assert report["n_cases"]["moe"]["lesion_b"]["1"] == 2
    assert report["notes"] == "Synthetic demo."
    assert report["case_mean"]["moe"]["1"] == pytest.approx(
        mean([r.dice for r in rows if (r.model, r.n_clicks) == ("moe", 1)])
    )
    liver = [r.dice for r in rows if (r.model, r.class_name, r.n_clicks) == ("moe", "liver", 5)]
    assert report["dice_std"]["moe"]["liver"]["5"] == pytest.approx(statistics.pstdev(liver))
    assert report["dice_std"]["moe"]["liver"]["5"] > 0  # three different random Dice values
    columns, data = report_table(report, 5)
    assert columns == ["class", "group", *MODELS]
    assert data[0] == ["liver", GENERAL, *[report["models"][m]["liver"]["5"] for m in MODELS]]

    assert read_rows_csv(files.csv) == [r for r in rows]  # all rows, duplicates dropped, NaN round-trips
    md = files.markdown.read_text()
    assert "| class | group | foundation | expert_a | expert_b | moe | oracle |" in md
    assert "## Dice after 1 click" in md and "## Dice after 5 clicks" in md
    assert "**average**" in md and "## Forgetting" in md and "Routing accuracy" in md
    assert "Synthetic demo." in md and "dice.png" in md
    liver_1 = report["models"]["expert_a"]["liver"]["1"]
    assert f"{liver_1:.3f}" in md

    import matplotlib.image

    img = matplotlib.image.imread(files.chart)
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400 and np.ptp(img) > 0


def test_numbers_come_from_the_rows(tmp_path):
    a = write_report(make_rows(1), tmp_path / "a")
    b = write_report(make_rows(2), tmp_path / "b")
    ja, jb = json.loads(a.json.read_text()), json.loads(b.json.read_text())
    assert ja["models"]["moe"]["liver"]["1"] != jb["models"]["moe"]["liver"]["1"]
    assert ja["models"]["moe"]["liver"]["1"] == pytest.approx(
        mean([r.dice for r in make_rows(1) if (r.model, r.class_name, r.n_clicks) == ("moe", "liver", 1)])
    )


def test_nan_is_null_and_options(tmp_path):
    rows = [
        EvalRow("foundation", "c1", "liver", GENERAL, 1, math.nan),
        EvalRow("foundation", "c1", "liver", GENERAL, 3, 0.5),
        EvalRow("foundation", "c1", "liver", GENERAL, 10, 0.7),
    ]
    files = write_report(rows, tmp_path, click_counts_shown=[1, 10], chart_clicks=10, extra={"seed": 233})
    text = files.json.read_text()
    assert "NaN" not in text
    report = json.loads(text)
    assert report["models"] == {"foundation": {"liver": {"1": None, "10": 0.7}}}
    assert report["routing_accuracy"] is None and report["seed"] == 233 and report["click_counts"] == [1, 10]
    assert "n/a" in files.markdown.read_text()
    with pytest.raises(ValueError, match="replace"):
        build_report(rows, extra={"models": {}})
    with pytest.raises(ValueError, match="no evaluation rows"):
        build_report([])
    with pytest.raises(ValueError, match="clicks"):
        write_report(rows, tmp_path / "x", chart_clicks=5)
