"""Evaluation reports in a run directory: results.csv, report.json, report.md and dice.png.

Every number comes from the `EvalRow`s passed in; nothing is filled in or hard-coded. NaN (a class with no
scorable case) is written as `null` in JSON, `nan` in CSV and `n/a` in markdown.

`report.json` has the shape::

    {"models": {MODEL: {CLASS: {"1": dice, "5": dice, ...}}},   # nan-aware mean Dice over cases
     "routing_accuracy": float | null,
     "nsd": {MODEL: {CLASS: {"1": nsd, ...}}},
     "dice_std": {MODEL: {CLASS: {"1": std, ...}}},              # nan-aware std over cases
     "n_cases": {MODEL: {CLASS: {"1": int, ...}}},               # non-NaN cases behind each Dice mean
     "average": {MODEL: {"all" | GROUP: {"1": dice, ...}}},       # macro average over classes
     "case_mean": {MODEL: {"1": dice, ...}},                      # mean over all (case, class) values
     "forgetting": {MODEL: {"1": delta, ...}},                    # general-class Dice minus the foundation's
     "routing_accuracy_by_model": {MODEL: float},
     "routing_confusion": {ORACLE_EXPERT: {ROUTED_EXPERT: count}},
     "classes": {CLASS: GROUP}, "click_counts": [1, 3, 5, 10], "foundation": str, "notes": str, ...}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sammoe.eval.results import (
    EvalRow,
    case_mean,
    class_average,
    class_counts,
    class_groups,
    class_means,
    class_stds,
    click_counts,
    forgetting,
    merge_rows,
    model_names,
    routing_accuracy,
    routing_confusion,
)
from sammoe.files import write_file

__all__ = [
    "ReportFiles",
    "write_rows_csv",
    "read_rows_csv",
    "build_report",
    "render_markdown",
    "report_table",
    "plot_dice",
    "write_report",
]


@dataclass(frozen=True)
class ReportFiles:
    """Paths written by `write_report`."""

    csv: Path
    json: Path
    markdown: Path
    chart: Path


# ---------------------------------------------------------------------------------------------- file helpers


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def write_rows_csv(rows: Iterable[EvalRow], path: str | os.PathLike[str]) -> Path:
    """All rows, one per line, columns as `EvalRow.columns()`; NaN as `nan`, a missing expert as empty."""
    path = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = EvalRow.columns()
    writer.writerow(cols)
    for row in rows:
        data = row.to_dict()
        writer.writerow([_csv_cell(data[c]) for c in cols])
    write_file(path, buf.getvalue().encode())
    return path


def read_rows_csv(path: str | os.PathLike[str]) -> list[EvalRow]:
    """Read back a `results.csv` written by `write_rows_csv`."""
    with open(path, newline="") as fh:
        return [EvalRow.from_dict(rec) for rec in csv.DictReader(fh)]


# ---------------------------------------------------------------------------------------------- report dict


def _json_value(x: Any) -> Any:
    """NaN/inf -> None, recursively; int keys -> str."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, Mapping):
        return {str(k): _json_value(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_value(v) for v in x]
    return x


def _by_clicks(values: Mapping[int, Any], ks: Sequence[int]) -> dict[str, Any]:
    return {str(k): values[k] for k in ks if k in values}


def build_report(
    rows: Iterable[EvalRow],
    *,
    click_counts_shown: Sequence[int] | None = None,
    foundation: str = "foundation",
    moe: str = "moe",
    notes: str = "",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-ready dict (see the module docstring); NaN already turned into None.

    `click_counts_shown` limits the click counts reported (default: all in `rows`). The top-level
    `routing_accuracy` is that of `moe`'s rows when they carry routing, else of all rows that do.
    `extra` adds keys (e.g. {"tolerance_mm": 1.0, "seed": 233}); it may not replace a computed one.
    """
    rows = merge_rows(rows)
    if not rows:
        raise ValueError("no evaluation rows to report; evaluate at least one model on one case.")
    ks = sorted(click_counts_shown) if click_counts_shown is not None else click_counts(rows)
    ks = [k for k in ks if k in set(click_counts(rows))]
    rows = [r for r in rows if r.n_clicks in ks]
    if not rows:
        raise ValueError(f"none of the click counts {list(click_counts_shown or [])} is in the rows.")
    models = model_names(rows, foundation)
    groups = class_groups(rows)
    dice_t, nsd_t, counts = class_means(rows, "dice"), class_means(rows, "nsd"), class_counts(rows, "dice")

    def nested(table: Mapping[str, Mapping[str, Mapping[int, Any]]]) -> dict[str, dict[str, dict[str, Any]]]:
        return {m: {c: _by_clicks(table[m][c], ks) for c in groups if c in table[m]} for m in models}

    average: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    for name, chosen in [("all", None)] + [
        (g, [c for c in groups if groups[c] == g]) for g in dict.fromkeys(groups.values())
    ]:
        for m, by_k in class_average(dice_t, chosen).items():
            average[m][name] = _by_clicks(by_k, ks)

    by_model = {m: routing_accuracy(rows, m) for m in models}
    by_model = {m: v for m, v in by_model.items() if not math.isnan(v)}
    top_model = moe if moe in by_model else None

    report: dict[str, Any] = {
        "models": nested(dice_t),
        "routing_accuracy": routing_accuracy(rows, top_model),
        "nsd": nested(nsd_t),
        "dice_std": nested(class_stds(rows, "dice")),
        "n_cases": nested(counts),
        "average": average,
        "case_mean": {m: _by_clicks(v, ks) for m, v in case_mean(rows, "dice").items()},
        "forgetting": {m: _by_clicks(v, ks) for m, v in forgetting(rows, foundation).items()},
        "routing_accuracy_by_model": by_model,
        "routing_confusion": routing_confusion(rows, top_model),
        "classes": groups,
        "click_counts": ks,
        "foundation": foundation,
        "n_rows": len(rows),
        "notes": notes,
    }
    for key, value in (extra or {}).items():
        if key in report:
            raise ValueError(f"extra key {key!r} would replace a computed report entry.")
        report[key] = value
    return _json_value(report)


# ---------------------------------------------------------------------------------------------- markdown


def _fmt(x: Any, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _table(header: Sequence[str], body: Sequence[Sequence[str]], text_cols: int = 1) -> list[str]:
    """A markdown table: the first `text_cols` columns left-aligned, the rest (numbers) right-aligned."""
    align = ["---"] * text_cols + ["---:"] * (len(header) - text_cols)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in r) + " |" for r in body]
    return lines


def _metric_rows(
    per_class: Mapping[str, Mapping[str, Mapping[str, Any]]],
    models: Sequence[str],
    classes: Mapping[str, str],
    k: str,
) -> list[list[str]]:
    body = []
    for c, group in classes.items():
        values = [per_class.get(m, {}).get(c, {}).get(k) for m in models]
        finite = [v for v in values if v is not None]
        best = max(finite) if finite else None
        cells = [
            f"**{_fmt(v)}**" if v is not None and v == best and len(finite) > 1 else _fmt(v) for v in values
        ]
        body.append([c, group, *cells])
    return body


def render_markdown(
    report: Mapping[str, Any], title: str = "Evaluation report", chart: str | None = None
) -> str:
    """Markdown tables of a `build_report` dict: Dice per class at each click count (best per row in bold)
    with averages, NSD, routing accuracy and confusion, forgetting, then the caller's notes."""
    models = list(report["models"])
    classes: Mapping[str, str] = report["classes"]
    ks = [str(k) for k in report["click_counts"]]
    out = [f"# {title}", ""]
    out += [
        f"{report['n_rows']} evaluation rows; {len(models)} models, {len(classes)} classes, "
        f"clicks {', '.join(ks)}. "
        "Mean over cases per class (cases with empty ground truth and empty prediction left out); "
        "averages are means over classes. Best model per row in bold.",
        "",
    ]
    if chart:
        out += [f"![Dice per class]({chart})", ""]
    groups = list(dict.fromkeys(classes.values()))
    for k in ks:
        out += [f"## Dice after {k} click{'s' if k != '1' else ''}", ""]
        body = _metric_rows(report["models"], models, classes, k)
        for name in ["all", *groups]:
            label = "**average**" if name == "all" else f"average ({name})"
            body.append(
                [label, "", *[_fmt(report["average"].get(m, {}).get(name, {}).get(k)) for m in models]]
            )
        body.append(
            ["mean over all cases", "", *[_fmt(report["case_mean"].get(m, {}).get(k)) for m in models]]
        )
        out += _table(["class", "group", *models], body, text_cols=2) + [""]
    out += ["## NSD (normalised surface Dice)", ""]
    for k in ks:
        out += [f"After {k} click{'s' if k != '1' else ''}:", ""]
        out += _table(
            ["class", "group", *models], _metric_rows(report["nsd"], models, classes, k), text_cols=2
        ) + [""]
    out += ["## Routing", ""]
    acc = report.get("routing_accuracy")
    if acc is None:
        out += ["No row carries both a routed and an oracle expert: routing accuracy is not available.", ""]
    else:
        out += [f"Routing accuracy (routed expert == oracle expert): **{acc:.3f}**", ""]
        by_model = report.get("routing_accuracy_by_model", {})
        if len(by_model) > 1:
            out += _table(["model", "routing accuracy"], [[m, _fmt(v)] for m, v in by_model.items()]) + [""]
        conf: Mapping[str, Mapping[str, int]] = report.get("routing_confusion", {})
        if conf:
            routed = sorted({r for by_r in conf.values() for r in by_r})
            body = [[o, *[str(conf[o].get(r, 0)) for r in routed]] for o in sorted(conf)]
            out += ["Confusion (rows: oracle expert, columns: routed expert):", ""]
            out += _table(["oracle \\ routed", *routed], body) + [""]
    out += ["## Forgetting", ""]
    fg: Mapping[str, Mapping[str, Any]] = report.get("forgetting", {})
    if fg:
        out += [
            f"Mean over general classes of each model's Dice minus {report['foundation']}'s "
            "at the same click count (negative: the model forgot).",
            "",
        ]
        out += _table(
            ["model", *[f"{k} click{'s' if k != '1' else ''}" for k in ks]],
            [[m, *[_fmt(v.get(k), signed=True) for k in ks]] for m, v in fg.items()],
        ) + [""]
    else:
        out += [
            f"Not available: no general class evaluated for both {report['foundation']} and another model.",
            "",
        ]
    notes = str(report.get("notes") or "").strip()
    if notes:
        out += ["## Notes", "", notes, ""]
    return "\n".join(out)


def report_table(
    report: Mapping[str, Any], n_clicks: int, metric: str = "models"
) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) of one per-class table, e.g. for `wandb.Table(columns=..., data=...)`:
    one line per class with its group and each model's value after `n_clicks` (None where missing).
    `metric` is a per-class section of the report: "models" (Dice), "nsd", "dice_std" or "n_cases"."""
    models = list(report["models"])
    columns = ["class", "group", *models]
    data = [
        [c, g, *[report[metric].get(m, {}).get(c, {}).get(str(n_clicks)) for m in models]]
        for c, g in report["classes"].items()
    ]
    return columns, data


# ---------------------------------------------------------------------------------------------- chart


def plot_dice(report: Mapping[str, Any], path: str | os.PathLike[str], n_clicks: int | None = None) -> Path:
    """Grouped bar chart: per class (and the average), one bar per model, Dice after `n_clicks` clicks
    (default: 5 if reported, else the largest count). Rendered with matplotlib's Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ks = [int(k) for k in report["click_counts"]]
    k = n_clicks if n_clicks is not None else (5 if 5 in ks else max(ks))
    if k not in ks:
        raise ValueError(f"no results at {k} clicks; reported click counts are {ks}.")
    models = list(report["models"])
    classes = [*report["classes"], "average"]

    def value(m: str, c: str) -> float:
        src = (
            report["average"].get(m, {}).get("all", {}) if c == "average" else report["models"][m].get(c, {})
        )
        v = src.get(str(k))
        return math.nan if v is None else float(v)

    width = 0.8 / max(len(models), 1)
    fig = Figure(figsize=(max(6.0, 0.4 + len(classes) * (0.3 + 0.22 * len(models))), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(classes))]
        ys = [value(m, c) for c in classes]
        ax.bar(xs, [0.0 if math.isnan(y) else y for y in ys], width=width, label=m)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per class after {k} click{'s' if k != 1 else ''}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncol=min(len(models), 6), loc="upper center", bbox_to_anchor=(0.5, -0.28))
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    path = Path(path)
    write_file(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------- all together


def write_report(
    rows: Iterable[EvalRow],
    run_dir: str | os.PathLike[str],
    *,
    click_counts_shown: Sequence[int] | None = None,
    chart_clicks: int | None = None,
    foundation: str = "foundation",
    moe: str = "moe",
    notes: str = "",
    title: str = "Evaluation report",
    extra: Mapping[str, Any] | None = None,
) -> ReportFiles:
    """Write results.csv (every row), report.json, report.md and dice.png into `run_dir`; return the paths.

    Rows may come from several DDP ranks: duplicates (same model, case, class, click count) are dropped.
    """
    merged = merge_rows(rows)
    run_dir = Path(run_dir)
    report = build_report(
        merged,
        click_counts_shown=click_counts_shown,
        foundation=foundation,
        moe=moe,
        notes=notes,
        extra=extra,
    )
    files = ReportFiles(
        csv=run_dir / "results.csv",
        json=run_dir / "report.json",
        markdown=run_dir / "report.md",
        chart=run_dir / "dice.png",
    )
    write_rows_csv(merged, files.csv)
    write_file(files.json, (json.dumps(report, indent=2, allow_nan=False) + "\n").encode())
    plot_dice(report, files.chart, chart_clicks)
    write_file(files.markdown, render_markdown(report, title=title, chart=files.chart.name).encode())
    return files
