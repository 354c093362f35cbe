"""Interactive evaluation of one batch of targets: Dice and NSD per model, case, class and click count.

Pure torch + numpy (no Lightning), shared by expert finetuning, gate training and router training; the clicks
are simulated by ``rollout.evaluation_rollout``.

A *batch* is a dict (the datamodule's collated output); what is read from it:

- ``image`` (B, 1, S, S, S) float, z-normalised ROI; ``label`` (B, 1, S, S, S) binary ROI target;
- ``case_id`` and ``class_name``: lists of B strings; optional ``class_group`` (``general``/``task``);
- optional, for metrics on the ORIGINAL grid (the official protocol): ``roi``
  (B ``sammoe.data.preprocess.Roi`` geometries to invert the ROI prediction with), ``orig_label``
  (B binary arrays on the original grid) and ``orig_spacing`` (B spacings in mm, array-axis order). Without
  them Dice/NSD are computed on the ROI grid with ``roi_spacing`` (the preprocessing spacing, 1.5 mm).
- optional ``first_click`` ((B, 3) ROI voxel coordinates): the click a click-centred crop was centred on,
  used as the first (positive) evaluation click instead of a random foreground voxel.

Each target is evaluated on its own (the official protocol seeds every case with 233), with every model's
clicks simulated from that model's own previous prediction. A model whose rollout is another's on a target is
not run again: the oracle is the single model it names (``same_as``), and a gate, which reads the first
positive click only, sends every click of a target to the decoder it chose at the first (``probe_route``: one
step finds that decoder, whose rows are reused when its first mask is the same). Each row is the one a full
rollout gives.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sammoe.data.inverse import invert
from sammoe.eval.metrics import dice, dice_nsd
from sammoe.eval.results import GENERAL, EvalRow
from sammoe.interact.rollout import StepFn, evaluation_rollout


@dataclass
class EvalModel:
    """One model to evaluate: a step function per target (so that oracle routing can depend on the target),
    and the expert names its routes index into (gated models only)."""

    name: str
    step_for: Callable[[int], StepFn]  # target index in the batch -> step function
    route_names: Sequence[str] | None = None
    # target index -> the model (evaluated earlier in the list) whose rollout this one's is, or None
    same_as: Callable[[int], str | None] | None = None
    probe_route: bool = False  # gated: one step tells which decoder (in ``route_names``) runs every click


@dataclass
class EvalExample:
    """One prediction kept for an overlay image (ROI grid)."""

    model: str
    case_id: str
    class_name: str
    n_clicks: int
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray
    dice: float


@dataclass
class BatchEvaluation:
    rows: list[EvalRow] = field(default_factory=list)
    examples: list[EvalExample] = field(default_factory=list)


def first_clicks(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The batch's centring clicks as the first click of every target ((B, 1, 3), (B, 1));
    None in bbox mode."""
    first = batch.get("first_click")
    if first is None:
        return None
    device = batch["label"].device if "label" in batch else None  # a cached crop's batch has no label
    coords = torch.as_tensor(first, dtype=torch.float32, device=device).reshape(-1, 1, 3)
    return coords, torch.ones(coords.shape[0], 1, dtype=torch.long, device=coords.device)


def as_eval_batch(batch: Any, device: torch.device | str | None = None) -> dict[str, Any] | None:
    """A train/val batch (dict) as is; a list of `SegDataModule` test items (un-cropped cases) as a dict
    with the ROI crops stacked and the original-grid geometry kept. Targets without a crop (the class is
    absent from the case, nothing to click) are left out; None when none is left."""
    if isinstance(batch, dict):
        return batch
    items = [item for item in batch if item.get("roi") is not None and item["roi"].label is not None]
    if not items:
        return None
    image = torch.stack([item["roi"].image for item in items])
    label = torch.stack([item["roi"].label.float() for item in items])
    if device is not None:
        image, label = image.to(device), label.to(device)
    return {
        "image": image,
        "label": label,
        "case_id": [str(item["case_id"]) for item in items],
        "dataset": [str(item.get("dataset", "")) for item in items],
        "class_name": [str(item["class_name"]) for item in items],
        "roi": [item["roi"] for item in items],
        "orig_label": [item["target"] for item in items],
        "orig_spacing": [tuple(float(s) for s in item["volume"].spacing) for item in items],
    }


def _strings(batch: dict[str, Any], key: str, n: int, default: str | None = None) -> list[str]:
    value = batch.get(key)
    if value is None:
        if default is None:
            raise KeyError(f"evaluation batch has no {key!r}; the datamodule must provide it")
        return [default] * n
    if isinstance(value, str):
        return [value] * n
    return [str(v) for v in value]


def _item(batch: dict[str, Any], key: str, b: int) -> Any:
    value = batch.get(key)
    if value is None:
        return None
    return value[b]


def target_metrics(
    pred_roi: torch.Tensor,
    b: int,
    batch: dict[str, Any],
    roi_spacing: Sequence[float],
    tolerance_mm: float | None,
) -> tuple[float, float]:
    """Dice and NSD of one ROI prediction: on the original grid when the batch carries the geometry.
    `tolerance_mm=None` skips NSD (NaN), which is the slow part on a CPU."""
    roi, orig_label = _item(batch, "roi", b), _item(batch, "orig_label", b)
    if roi is not None and orig_label is not None:
        pred = invert(roi, pred_roi.cpu().numpy().astype(np.uint8))
        gt = orig_label.cpu().numpy() if hasattr(orig_label, "cpu") else np.asarray(orig_label)
        spacing = _item(batch, "orig_spacing", b)
        if spacing is None:
            spacing = np.sqrt((np.asarray(roi.orig_affine)[:3, :3] ** 2).sum(0))
        spacing = [float(s) for s in (spacing.tolist() if hasattr(spacing, "tolist") else spacing)]
        return _score(pred != 0, gt != 0, spacing, tolerance_mm)
    gt_roi = batch["label"][b, 0].bool().cpu().numpy()
    return _score(pred_roi.cpu().numpy(), gt_roi, roi_spacing, tolerance_mm)


def _score(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerance_mm: float | None):
    if tolerance_mm is None:
        return dice(pred, gt), math.nan
    return dice_nsd(pred, gt, spacing, tolerance_mm)


@torch.no_grad()
def evaluate_batch(
    models: Sequence[EvalModel],
    embeddings: torch.Tensor,
    batch: dict[str, Any],
    *,
    click_counts: Sequence[int] = (1, 3, 5, 10),
    seed: int = 233,
    low_res_size: int | None = None,
    roi_spacing: Sequence[float] = (1.5, 1.5, 1.5),
    tolerance_mm: float | None = 1.0,
    class_group: Callable[[str], str] | None = None,
    oracle_expert: Callable[[str], str | None] | None = None,
    keep_examples: int = 0,
) -> BatchEvaluation:
    """Run the official click protocol for every model on every target of the batch and score it.

    `embeddings` are the image encoder's output for `batch["image"]` (computed once, shared by all models).
    `class_group(class_name)` names the class group when the batch has no ``class_group``;
    `oracle_expert(class_name)` the expert that should handle the class (written into gated rows).
    """
    gt = batch["label"]
    bsz = gt.shape[0]
    cases = _strings(batch, "case_id", bsz)
    datasets = batch.get("dataset")
    if datasets is not None and not isinstance(datasets, str):  # case ids are unique per dataset only
        cases = [f"{d}/{c}" if d else c for d, c in zip(datasets, cases)]
    classes = _strings(batch, "class_name", bsz)
    groups = batch.get("class_group")
    groups = (
        [str(g) for g in groups]
        if groups is not None
        else [class_group(c) if class_group else GENERAL for c in classes]
    )
    out = BatchEvaluation()
    first = first_clicks(batch)
    for b in range(bsz):
        first_b = None if first is None else (first[0][b : b + 1], first[1][b : b + 1])

        def rollout_of(model: EvalModel, counts: Sequence[int], b: int = b, first_b: Any = first_b):
            return evaluation_rollout(
                model.step_for(b),
                embeddings[b : b + 1],
                gt[b : b + 1],
                click_counts=counts,
                seed=seed,
                low_res_size=low_res_size,
                first_clicks=first_b,
            )

        done: dict[str, tuple[dict[int, tuple[float, float]], torch.Tensor]] = {}
        for model in models:
            twin = _twin(model, b, done, keep_examples > len(out.examples), rollout_of)
            if twin is not None:
                scores = done[twin][0]
                routed = twin if model.route_names is not None else None
                for n in sorted(scores):
                    out.rows.append(
                        _row(model.name, b, n, scores[n], routed, cases, classes, groups, oracle_expert)
                    )
                continue
            rollout = rollout_of(model, click_counts)
            scores: dict[int, tuple[float, float]] = {}
            for n in sorted(rollout.masks):
                pred = rollout.masks[n][0, 0]
                d, s = scores[n] = target_metrics(pred, b, batch, roi_spacing, tolerance_mm)
                routed = None
                route = rollout.routes.get(n)
                if model.route_names is not None and route is not None:
                    k = int(route.reshape(-1)[0])
                    routed = model.route_names[k] if k >= 0 else "soft"
                out.rows.append(_row(model.name, b, n, (d, s), routed, cases, classes, groups, oracle_expert))
                if len(out.examples) < keep_examples and n == max(rollout.masks):
                    out.examples.append(
                        EvalExample(
                            model.name,
                            cases[b],
                            classes[b],
                            n,
                            batch["image"][b, 0].float().cpu().numpy(),
                            gt[b, 0].bool().cpu().numpy(),
                            pred.cpu().numpy(),
                            d,
                        )
                    )
            if rollout.masks:
                done[model.name] = (scores, rollout.masks[min(rollout.masks)])
    return out


def _twin(model: EvalModel, b: int, done: dict, examples_wanted: bool, rollout_of: Callable) -> str | None:
    """The model evaluated earlier whose rollout on target ``b`` this model's is (None: run it)."""
    if examples_wanted:
        return None  # the overlay images show each model's own prediction
    if model.same_as is not None:
        twin = model.same_as(b)
        return twin if twin in done else None
    if not model.probe_route or model.route_names is None:
        return None
    probe = rollout_of(model, [1])
    route = probe.routes.get(1)
    k = -1 if route is None else int(route.reshape(-1)[0])
    twin = model.route_names[k] if k >= 0 else None
    if twin not in done or not torch.equal(probe.masks[1], done[twin][1]):
        return None
    return twin


def _row(name, b, n, scores, routed, cases, classes, groups, oracle_expert) -> EvalRow:
    return EvalRow(
        model=name,
        case_id=cases[b],
        class_name=classes[b],
        class_group=groups[b],
        n_clicks=n,
        dice=scores[0],
        nsd=scores[1],
        routed_expert=routed,
        oracle_expert=oracle_expert(classes[b]) if (oracle_expert and routed is not None) else None,
    )
