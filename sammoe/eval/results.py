"""Evaluation rows and their aggregation: per-class means, routing accuracy, forgetting.

One `EvalRow` is one model evaluated on one class of one case after `n_clicks` clicks. Rows are plain,
picklable data, so each DDP rank can evaluate its share of the cases and rank 0 can merge what
`all_gather_object` brings back: `merge_rows` drops the duplicates that a padded DistributedSampler
produces (same model, case, class and click count), keeping the first.

Aggregation follows the official evaluation: a nan-aware mean over cases per (model, class, click count),
where NaN is the empty-ground-truth-and-empty-prediction case (see `sammoe.eval.metrics`); averages over
classes are means of those per-class means (macro average), again ignoring NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = [
    "GENERAL",
    "TASK",
    "EvalRow",
    "merge_rows",
    "model_names",
    "class_groups",
    "click_counts",
    "nanmean",
    "class_means",
    "class_counts",
    "class_stds",
    "class_average",
    "case_mean",
    "routing_accuracy",
    "routing_confusion",
    "forgetting",
]

GENERAL = "general"
"""Class group of the structures the foundation model was trained on."""
TASK = "task"
"""Class group of the structures an expert was finetuned for."""

_METRICS = ("dice", "nsd")


def _to_float(value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "null")):
        return math.nan
    return float(value)


def _to_opt_str(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value)
    return text if text else None


@dataclass(frozen=True)
class EvalRow:
    """One model on one class of one case after `n_clicks` clicks.

    `dice` and `nsd` are in [0, 1] or NaN (empty ground truth and empty prediction). `routed_expert` is the
    expert the gate chose at the last click (gated models only); `oracle_expert` the expert that should have
    been chosen (the expert trained for this class, or the foundation for a general class).
    """

    model: str
    case_id: str
    class_name: str
    class_group: str
    n_clicks: int
    dice: float
    nsd: float = math.nan
    routed_expert: str | None = None
    oracle_expert: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for name in ("model", "case_id", "class_name", "class_group"):
            value = getattr(self, name)
            if value is None or str(value) == "":
                raise ValueError(f"EvalRow.{name} must be a non-empty string, got {value!r}.")
            set_(self, name, str(value))
        n = int(self.n_clicks)
        if n < 0 or n != float(self.n_clicks):
            raise ValueError(f"EvalRow.n_clicks must be a whole number >= 0, got {self.n_clicks!r}.")
        set_(self, "n_clicks", n)
        for name in _METRICS:
            value = _to_float(getattr(self, name))
            if not (math.isnan(value) or 0.0 <= value <= 1.0):
                raise ValueError(f"EvalRow.{name} must lie in [0, 1] or be NaN, got {value!r}.")
            set_(self, name, value)
        set_(self, "routed_expert", _to_opt_str(self.routed_expert))
        set_(self, "oracle_expert", _to_opt_str(self.oracle_expert))

    @property
    def key(self) -> tuple[str, str, str, int]:
        """Identity of a row: (model, case_id, class_name, n_clicks)."""
        return (self.model, self.case_id, self.class_name, self.n_clicks)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EvalRow:
        """Build a row from a mapping, e.g. a CSV record of strings; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @staticmethod
    def columns() -> list[str]:
        return [f.name for f in fields(EvalRow)]


def merge_rows(*parts: Iterable[EvalRow | Mapping[str, Any]]) -> list[EvalRow]:
    """Concatenate row lists (e.g. one per DDP rank) and drop duplicate keys, keeping the first occurrence."""
    seen: set[tuple[str, str, str, int]] = set()
    out: list[EvalRow] = []
    for part in parts:
        for item in part:
            row = item if isinstance(item, EvalRow) else EvalRow.from_dict(item)
            if row.key not in seen:
                seen.add(row.key)
                out.append(row)
    return out


def model_names(rows: Iterable[EvalRow], foundation: str = "foundation") -> list[str]:
    """Models in display order: the foundation, then the others in order of first appearance, `moe` and
    `oracle` (when present) last."""
    order: list[str] = []
    for row in rows:
        if row.model not in order:
            order.append(row.model)
    head = [m for m in order if m == foundation]
    tail = [m for m in ("moe", "oracle") if m in order and m != foundation]
    return head + [m for m in order if m not in head and m not in tail] + tail


def class_groups(rows: Iterable[EvalRow]) -> dict[str, str]:
    """Class name -> group, general classes first, each group in order of first appearance."""
    groups: dict[str, str] = {}
    for row in rows:
        known = groups.setdefault(row.class_name, row.class_group)
        if known != row.class_group:
            raise ValueError(
                f"class {row.class_name!r} is in group {known!r} in one row "
                f"and {row.class_group!r} in another."
            )
    ordered = [c for c, g in groups.items() if g == GENERAL] + [c for c, g in groups.items() if g != GENERAL]
    return {c: groups[c] for c in ordered}


def click_counts(rows: Iterable[EvalRow]) -> list[int]:
    return sorted({row.n_clicks for row in rows})


def nanmean(values: Iterable[float]) -> float:
    """Mean of the non-NaN values; NaN when there are none (no warning)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return math.fsum(kept) / len(kept) if kept else math.nan


Table = dict[str, dict[str, dict[int, float]]]
"""model -> class -> n_clicks -> value."""


def _collect(rows: Iterable[EvalRow], metric: str) -> dict[str, dict[str, dict[int, list[float]]]]:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
    acc: dict[str, dict[str, dict[int, list[float]]]] = {}
    for row in rows:
        acc.setdefault(row.model, {}).setdefault(row.class_name, {}).setdefault(row.n_clicks, []).append(
            getattr(row, metric)
        )
    return acc


def class_means(rows: Iterable[EvalRow], metric: str = "dice") -> Table:
    """Nan-aware mean over cases for every (model, class, click count) present in `rows`."""
    acc = _collect(rows, metric)
    return {
        m: {c: {k: nanmean(v) for k, v in by_k.items()} for c, by_k in by_c.items()}
        for m, by_c in acc.items()
    }


def class_counts(rows: Iterable[EvalRow], metric: str = "dice") -> dict[str, dict[str, dict[int, int]]]:
    """Number of non-NaN cases behind each mean of `class_means`."""
    acc = _collect(rows, metric)
    return {
        m: {c: {k: sum(not math.isnan(x) for x in v) for k, v in by_k.items()} for c, by_k in by_c.items()}
        for m, by_c in acc.items()
    }


def class_stds(rows: Iterable[EvalRow], metric: str = "dice") -> Table:
    """Nan-aware population standard deviation over cases (the official evaluation reports mean +- std)."""
    acc = _collect(rows, metric)
    out: Table = {}
    for m, by_c in acc.items():
        for c, by_k in by_c.items():
            for k, values in by_k.items():
                mu = nanmean(values)
                out.setdefault(m, {}).setdefault(c, {})[k] = nanmean((v - mu) ** 2 for v in values) ** 0.5
    return out


def case_mean(rows: Iterable[EvalRow], metric: str = "dice") -> dict[str, dict[int, float]]:
    """model -> n_clicks -> nan-aware mean over all (case, class) values: the official "overall" number,
    which weights classes by how many cases they have (unlike `class_average`)."""
    acc: dict[str, dict[int, list[float]]] = {}
    for m, by_c in _collect(rows, metric).items():
        for by_k in by_c.values():
            for k, values in by_k.items():
                acc.setdefault(m, {}).setdefault(k, []).extend(values)
    return {m: {k: nanmean(v) for k, v in sorted(by_k.items())} for m, by_k in acc.items()}


def class_average(table: Table, classes: Sequence[str] | None = None) -> dict[str, dict[int, float]]:
    """model -> n_clicks -> nan-aware mean over `classes` (all classes when None) of the per-class means."""
    out: dict[str, dict[int, float]] = {}
    for model, by_class in table.items():
        chosen = [c for c in by_class if classes is None or c in classes]
        ks = sorted({k for c in chosen for k in by_class[c]})
        if ks:
            out[model] = {k: nanmean(by_class[c].get(k, math.nan) for c in chosen) for k in ks}
    return out


def _routed(rows: Iterable[EvalRow], model: str | None) -> list[EvalRow]:
    return [
        r
        for r in rows
        if r.routed_expert is not None and r.oracle_expert is not None and (model is None or r.model == model)
    ]


def routing_accuracy(rows: Iterable[EvalRow], model: str | None = None) -> float:
    """Fraction of rows whose routed expert equals the oracle expert, over the rows that carry both
    (of `model` only, when given); NaN when no row does."""
    routed = _routed(rows, model)
    if not routed:
        return math.nan
    return sum(r.routed_expert == r.oracle_expert for r in routed) / len(routed)


def routing_confusion(rows: Iterable[EvalRow], model: str | None = None) -> dict[str, dict[str, int]]:
    """oracle expert -> routed expert -> number of rows (rows carrying both, of `model` when given)."""
    out: dict[str, dict[str, int]] = {}
    for r in _routed(rows, model):
        by_routed = out.setdefault(str(r.oracle_expert), {})
        by_routed[str(r.routed_expert)] = by_routed.get(str(r.routed_expert), 0) + 1
    return out


def forgetting(
    rows: Iterable[EvalRow], foundation: str = "foundation", metric: str = "dice"
) -> dict[str, dict[int, float]]:
    """model -> n_clicks -> mean over general classes of (model's class mean - foundation's class mean).

    Negative means the model forgot. Only classes and click counts that both the model and the foundation
    were evaluated on count; the foundation itself is left out. Empty when there is no foundation row.
    """
    rows = list(rows)
    general = [c for c, g in class_groups(rows).items() if g == GENERAL]
    table = class_means(rows, metric)
    base = table.get(foundation)
    if base is None:
        return {}
    out: dict[str, dict[int, float]] = {}
    for model, by_class in table.items():
        if model == foundation:
            continue
        per_k: dict[int, list[float]] = {}
        for c in general:
            for k, value in by_class.get(c, {}).items():
                if k in base.get(c, {}):
                    per_k.setdefault(k, []).append(value - base[c][k])
        if per_k:
            out[model] = {k: nanmean(v) for k, v in sorted(per_k.items())}
    return out
