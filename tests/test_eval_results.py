"""Evaluation rows: DDP merge/dedupe, nan-aware means, routing accuracy, forgetting."""

import math
import pickle

import pytest

from sammoe.eval import (
    GENERAL,
    TASK,
    EvalRow,
    case_mean,
    class_average,
    class_counts,
    class_groups,
    class_means,
    class_stds,
    forgetting,
    merge_rows,
    model_names,
    nanmean,
    routing_accuracy,
    routing_confusion,
)


def row(model, case, cls, k, d, group=GENERAL, **kw):
    return EvalRow(model=model, case_id=case, class_name=cls, class_group=group, n_clicks=k, dice=d, **kw)


def test_row_validation_and_round_trip():
    r = row("moe", "c1", "liver", 5, 0.5, nsd="0.25", routed_expert="E0", oracle_expert="")
    assert r.nsd == 0.25 and r.oracle_expert is None and r.key == ("moe", "c1", "liver", 5)
    assert EvalRow.from_dict({**r.to_dict(), "unknown": 1}) == r
    assert pickle.loads(pickle.dumps(r)) == r
    assert math.isnan(row("m", "c", "x", 1, "nan").dice)
    with pytest.raises(ValueError, match="dice"):
        row("m", "c", "x", 1, 1.5)
    with pytest.raises(ValueError, match="n_clicks"):
        row("m", "c", "x", -1, 0.5)
    with pytest.raises(ValueError, match="model"):
        row("", "c", "x", 1, 0.5)


def test_merge_rows_from_ranks_drops_padding_duplicates():
    rank0 = [row("f", "c1", "liver", 1, 0.8), row("f", "c2", "liver", 1, 0.6)]
    # DistributedSampler pads rank 1 with a repeat of c1; dicts (e.g. from all_gather_object) work too
    rank1 = [row("f", "c3", "liver", 1, 0.4).to_dict(), row("f", "c1", "liver", 1, 0.8)]
    merged = merge_rows(rank0, rank1)
    assert [r.case_id for r in merged] == ["c1", "c2", "c3"]
    assert class_means(merged)["f"]["liver"][1] == pytest.approx(0.6)
    assert class_counts(merged)["f"]["liver"][1] == 3


def test_nan_aware_means_and_averages():
    rows = [
        row("f", "c1", "liver", 1, 0.5),
        row("f", "c2", "liver", 1, float("nan")),  # empty GT & empty prediction: left out
        row("f", "c3", "liver", 1, 0.7),
        row("f", "c1", "lesion", 1, float("nan"), group=TASK),
        row("f", "c1", "liver", 5, 0.9),
    ]
    t = class_means(rows)
    assert t["f"]["liver"] == {1: pytest.approx(0.6), 5: pytest.approx(0.9)}
    assert math.isnan(t["f"]["lesion"][1])
    assert class_counts(rows)["f"]["liver"][1] == 2
    assert class_average(t)["f"][1] == pytest.approx(0.6)  # the all-NaN class does not drag the mean
    assert math.isnan(nanmean([float("nan")])) and math.isnan(nanmean([]))
    assert class_groups(rows) == {"liver": GENERAL, "lesion": TASK}
    with pytest.raises(ValueError, match="group"):
        class_groups(rows + [row("f", "c9", "liver", 1, 0.1, group=TASK)])


def test_model_order_puts_foundation_first_and_moe_oracle_last():
    rows = [row(m, "c", "x", 1, 0.5) for m in ("oracle", "moe", "expert_b", "foundation", "expert_a")]
    assert model_names(rows) == ["foundation", "expert_b", "expert_a", "moe", "oracle"]


def test_routing_accuracy_and_confusion():
    rows = [
        row("moe", "c1", "liver", 1, 0.5, routed_expert="E0", oracle_expert="E0"),
        row("moe", "c2", "liver", 1, 0.5, routed_expert="E1", oracle_expert="E0"),
        row("moe", "c1", "lesion", 1, 0.5, group=TASK, routed_expert="E1", oracle_expert="E1"),
        row("moe", "c2", "lesion", 1, 0.5, group=TASK, routed_expert="E1", oracle_expert="E1"),
        row("oracle", "c1", "liver", 1, 0.5, routed_expert="E0", oracle_expert="E0"),
        row("foundation", "c1", "liver", 1, 0.5),  # no routing: not counted
    ]
    assert routing_accuracy(rows, "moe") == pytest.approx(0.75)
    assert routing_accuracy(rows) == pytest.approx(0.8)
    assert math.isnan(routing_accuracy(rows, "foundation"))
    assert routing_confusion(rows, "moe") == {"E0": {"E0": 1, "E1": 1}, "E1": {"E1": 2}}


def test_forgetting_is_general_class_dice_minus_foundation():
    rows = []
    for k, base in ((1, 0.6), (5, 0.8)):
        for case in ("c1", "c2"):
            rows += [
                row("foundation", case, "liver", k, base),
                row("foundation", case, "kidney", k, base - 0.2),
                row("foundation", case, "lesion", k, 0.1, group=TASK),
                row("expert", case, "liver", k, base - 0.3),
                row("expert", case, "kidney", k, base - 0.3),  # 0.1 below the foundation on kidney
                row("expert", case, "lesion", k, 0.9, group=TASK),  # task classes do not count
                row("moe", case, "liver", k, base),
                row("moe", case, "kidney", k, base - 0.2),
            ]
    fg = forgetting(rows)
    assert set(fg) == {"expert", "moe"}
    assert fg["expert"] == {1: pytest.approx(-0.2), 5: pytest.approx(-0.2)}
    assert fg["moe"] == {1: pytest.approx(0.0), 5: pytest.approx(0.0)}
    assert forgetting(rows, foundation="missing") == {}


def test_std_and_case_mean_weight_cases_not_classes():
    rows = [
        row("f", "c1", "liver", 1, 0.2),
        row("f", "c2", "liver", 1, 0.6),
        row("f", "c3", "liver", 1, float("nan")),
        row("f", "c1", "lesion", 1, 1.0, group=TASK),
    ]
    assert class_stds(rows)["f"]["liver"][1] == pytest.approx(0.2)
    assert class_stds(rows)["f"]["lesion"][1] == 0.0
    assert case_mean(rows)["f"][1] == pytest.approx(0.6)  # (0.2 + 0.6 + 1.0) / 3
    assert class_average(class_means(rows))["f"][1] == pytest.approx(0.7)  # (0.4 + 1.0) / 2
