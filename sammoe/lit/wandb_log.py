"""Evaluation results to Weights & Biases: per-class Dice tables per click count, routing confusion matrix,
slice overlays. A no-op when the trainer has no WandbLogger. Call on rank 0 only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sammoe.eval.report import report_table
from sammoe.interact.crop_evaluation import EvalExample


def wandb_logger(trainer: Any) -> Any | None:
    from lightning.pytorch.loggers import WandbLogger

    for logger in getattr(trainer, "loggers", []) or []:
        if isinstance(logger, WandbLogger):
            return logger
    return None


def log_evaluation(
    trainer: Any,
    stage: str,
    report: Mapping[str, Any],
    examples: Sequence[EvalExample] = (),
    roi_spacing: Sequence[float] | None = None,
) -> bool:
    """Log one evaluation's report and overlays; returns False when there is no W&B logger."""
    logger = wandb_logger(trainer)
    if logger is None:
        return False
    import wandb

    step = int(trainer.global_step)
    for n in report["click_counts"]:
        columns, data = report_table(report, int(n), "models")
        logger.log_table(f"{stage}/dice_{n}_clicks", columns=columns, data=data, step=step)
        columns, data = report_table(report, int(n), "nsd")
        logger.log_table(f"{stage}/nsd_{n}_clicks", columns=columns, data=data, step=step)
    confusion: Mapping[str, Mapping[str, int]] = report.get("routing_confusion") or {}
    if confusion:
        names = sorted({*confusion, *(r for by_r in confusion.values() for r in by_r)})
        index = {name: i for i, name in enumerate(names)}
        y_true, preds = [], []
        for oracle, by_routed in confusion.items():
            for routed, count in by_routed.items():
                y_true += [index[oracle]] * int(count)
                preds += [index[routed]] * int(count)
        plot = wandb.plot.confusion_matrix(
            y_true=y_true, preds=preds, class_names=names, title=f"{stage} routing (oracle vs routed)"
        )
        logger.experiment.log({f"{stage}/routing_confusion": plot}, step=step)
        rows = [[o, r, int(c)] for o, by_r in confusion.items() for r, c in by_r.items()]
        logger.log_table(
            f"{stage}/routing_counts", columns=["oracle", "routed", "count"], data=rows, step=step
        )
    if examples:
        from sammoe.eval.overlay import overlay_slices

        images, captions = [], []
        for ex in examples:
            title = f"{ex.model} | {ex.case_id} | {ex.class_name} | {ex.n_clicks} clicks | Dice {ex.dice:.3f}"
            images.append(overlay_slices(ex.image, ex.gt, ex.pred, spacing_mm=roi_spacing, title=title))
            captions.append(title)
        logger.log_image(f"{stage}/overlays", images=images, caption=captions, step=step)
    return True
