"""Evaluation: Dice/NSD per class and click count, routing accuracy, forgetting, reports and overlays.

Pure numpy/monai/matplotlib (imported lazily where heavy); never imports `sammoe.model` or Lightning, so the
LightningModules, the CLI and scripts can all use it.
"""

from sammoe.eval.gather import all_gather_rows
from sammoe.eval.metrics import dice, dice_nsd, nsd
from sammoe.eval.overlay import overlay_slices, target_centre
from sammoe.eval.report import (
    ReportFiles,
    build_report,
    plot_dice,
    read_rows_csv,
    render_markdown,
    report_table,
    write_report,
    write_rows_csv,
)
from sammoe.eval.results import (
    GENERAL,
    TASK,
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
    nanmean,
    routing_accuracy,
    routing_confusion,
)

__all__ = [
    "GENERAL",
    "TASK",
    "EvalRow",
    "all_gather_rows",
    "case_mean",
    "class_stds",
    "report_table",
    "ReportFiles",
    "build_report",
    "class_average",
    "class_counts",
    "class_groups",
    "class_means",
    "click_counts",
    "dice",
    "dice_nsd",
    "forgetting",
    "merge_rows",
    "model_names",
    "nanmean",
    "nsd",
    "overlay_slices",
    "plot_dice",
    "read_rows_csv",
    "render_markdown",
    "routing_accuracy",
    "routing_confusion",
    "target_centre",
    "write_report",
    "write_rows_csv",
]
