"""What expert finetuning and gate training share: the interactive evaluation in validate/test, its report
in the run directory and its W&B logging, DDP-correct (every rank evaluates its share of the targets, the rows
are gathered and de-duplicated, so a case padded onto two ranks counts once)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from sammoe.eval.calibration import BACKGROUND
from sammoe.eval.gather import all_gather_rows
from sammoe.eval.protocols import BBOX_FOLDER, BBOX_PROTOCOL, CLICK_PROTOCOL, NOTES, ROI_CLICK_PROTOCOL
from sammoe.eval.report import build_report, write_report
from sammoe.eval.results import GENERAL, EvalRow, class_average, class_means
from sammoe.interact.crop_evaluation import (
    EvalExample,
    EvalModel,
    as_eval_batch,
    evaluate_batch,
    first_clicks,
)
from sammoe.interact.rollout import StepFn, evaluation_rollout
from sammoe.lit.wandb_log import log_evaluation
from sammoe.model.moe import SamMoE


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation protocol of validation and ``sammoe test``, one value for the module's lifetime: click
    counts (official 1/3/5/10), the per-target seed (233), the NSD tolerance in mm (None: no NSD), the ROI
    spacing and whether overlay pictures are logged. The LightningModules take these as flat arguments (the
    config keys users write, ``model.init_args.click_counts``) and hand them on here, by name."""

    click_counts: tuple[int, ...] = (1, 3, 5, 10)
    seed: int = 233
    nsd_tolerance_mm: float | None = 1.0
    roi_spacing: tuple[float, ...] = (1.5, 1.5, 1.5)
    overlay_images: bool = True

    def __post_init__(self) -> None:
        counts = tuple(self.click_counts)
        if not counts or min(counts) < 1:
            raise ValueError(f"click_counts must be positive integers, got {list(counts)}")
        tolerance = None if self.nsd_tolerance_mm is None else float(self.nsd_tolerance_mm)
        object.__setattr__(self, "click_counts", tuple(sorted({int(k) for k in counts})))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "nsd_tolerance_mm", tolerance)
        object.__setattr__(self, "roi_spacing", tuple(float(v) for v in self.roi_spacing))
        object.__setattr__(self, "overlay_images", bool(self.overlay_images))


def export_files(args: Any, run_dir: Path | None, default: Path) -> dict[str, Path]:
    """The files a run's export writes, for ``sammoe fit`` to check before training (name for messages ->
    path): ``default`` (relative) in the run folder when ``run_dir`` is known, and ``export_path``."""
    found: dict[str, Path] = {}
    if run_dir is not None:
        found[f"the run folder's {default.as_posix()}"] = run_dir / default
    if args.get("export_path"):
        found["model.init_args.export_path"] = Path(args["export_path"])
    return found


class InteractiveModule(L.LightningModule):
    """Base of the sammoe LightningModules (use a subclass: `ExpertFinetune`, `GateTraining`).

    Subclasses set `self.backbone` and implement `eval_models`; they may override `class_group`,
    `oracle_expert`, `primary_model` and `finalize_rows`.
    """

    backbone: Any

    def __init__(self, evaluation: EvalSettings) -> None:
        super().__init__()
        self.evaluation = evaluation
        self._rows: list[EvalRow] = []
        self._bbox_rows: list[EvalRow] = []
        self._examples: list[EvalExample] = []
        self._predictor: Any = None
        self._protocol = ROI_CLICK_PROTOCOL
        self.last_report: dict[str, Any] | None = None
        self.last_report_dir: Path | None = None

    # ------------------------------------------------------------------------------------- to override
    def eval_models(self, batch: dict[str, Any]) -> list[EvalModel]:
        raise NotImplementedError

    def class_group(self, class_name: str) -> str:
        return GENERAL

    def oracle_expert(self, class_name: str) -> str | None:
        return None

    def primary_model(self) -> str:
        """The model whose Dice is logged as `<stage>/dice` (checkpoint monitor)."""
        raise NotImplementedError

    def primary_step(self, image: torch.Tensor) -> StepFn:
        """Step function of the model that `predict` runs on this encoded crop (1, 1, S, S, S)."""
        raise NotImplementedError

    def finalize_rows(self, rows: list[EvalRow], stage: str) -> tuple[list[EvalRow], dict[str, Any]]:
        """Last look at the gathered rows (same on every rank) before the report; returns rows + extra
        keys."""
        return rows, {}

    def predictor_model(self) -> torch.nn.Module:
        """The model (SamMed3D or SamMoE) a Predictor runs in the click-centred test protocol."""
        raise NotImplementedError

    def predictor_routes(self, class_name: str) -> list[tuple[str, str | None, torch.nn.Module | None]]:
        """(report name, Predictor route, replacement decoder) of every model to test on a target of this
        class through the Predictor; route None lets the model's gate decide."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------- helpers
    @torch.no_grad()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone.image_encoder(image)

    def run_dir(self) -> Path:
        """The run directory (the logger's save_dir, else default_root_dir). Call on every rank."""
        trainer = self.trainer
        return Path(trainer.log_dir or trainer.default_root_dir)

    # ------------------------------------------------------------------------------------- evaluation
    def _reset_eval(self) -> None:
        self._rows, self._bbox_rows, self._examples = [], [], []
        self._predictor = None

    def _roi_rows(self, batch: dict[str, Any], batch_idx: int) -> list[EvalRow]:
        """The click protocol on the batch's crops (one encoder pass shared by every model)."""
        embeddings = self.encode(batch["image"])
        models = self.eval_models(batch)
        result = evaluate_batch(
            models,
            embeddings,
            batch,
            click_counts=self.evaluation.click_counts,
            seed=self.evaluation.seed,
            low_res_size=self.backbone.low_res_size,
            roi_spacing=self.evaluation.roi_spacing,
            tolerance_mm=self.evaluation.nsd_tolerance_mm,
            class_group=self.class_group,
            oracle_expert=self.oracle_expert,
            keep_examples=len(models) if (batch_idx == 0 and self.evaluation.overlay_images) else 0,
        )
        self._examples.extend(result.examples)
        return result.rows

    def _predictor_for_eval(self) -> Any:
        """One Predictor over this module's model per evaluation epoch. An ROI encoded for one model is reused
        by the others only at exactly the same place (``share_roi=0``): every target is cropped exactly around
        its own click, as a fresh `sammoe segment` of it would be, so its result cannot depend on which
        targets and models ran before it (with ROI sharing the foundation's kidney_right moved by 6 Dice
        points between two runs that differed only in the models compared)."""
        from sammoe.inference.predictor import Predictor

        if self._predictor is None:
            self._predictor = Predictor(
                self.predictor_model(),
                self.device,
                target_spacing=self.evaluation.roi_spacing,
                autocast=False,
                share_roi=0.0,
            )
            self._predictor_image = None
        return self._predictor

    def _predictor_rows(self, items: list[dict[str, Any]]) -> list[EvalRow]:
        """The click-centred protocol through the Predictor on whole test volumes (original grid)."""
        from sammoe.inference.protocol import evaluate_target

        predictor = self._predictor_for_eval()
        rows = []
        for item in items:
            if item.get("target") is None or not item["target"].any():
                continue
            if self._predictor_image != item["image_path"]:
                predictor.set_image(item["volume"])
                self._predictor_image = item["image_path"]
            case = f"{item['dataset']}/{item['case_id']}" if item.get("dataset") else str(item["case_id"])
            cls = str(item["class_name"])
            spacing = [float(v) for v in item["volume"].spacing]
            gated = isinstance(self.predictor_model(), SamMoE)
            background = cls == BACKGROUND
            if background and not gated:
                continue
            # a background click has no target to score: only where the gate sends it counts
            routes = [("moe", None, None)] if background else self.predictor_routes(cls)
            scored: dict[tuple[str | None, Any], Any] = {}  # the same forced route scores the same (oracle)
            memo: dict[bytes, tuple[float, float]] = {}  # the same mask scores the same (a MoE's masks)
            for name, route, decoder in routes:
                predictor.route, predictor.decoder = route, decoder
                key = (route, id(decoder))
                if route is not None and key in scored:
                    scores = scored[key]
                else:
                    scores = evaluate_target(
                        predictor,
                        item["target"],
                        spacing,
                        click_counts=(1,) if background else self.evaluation.click_counts,
                        seed=self.evaluation.seed,
                        tolerance_mm=None if background else self.evaluation.nsd_tolerance_mm,
                        name=cls,
                        first_click=item.get("first_click_input"),
                        memo=memo,
                    )
                    scored[key] = scores
                if scores is None:
                    continue
                for n in sorted(scores.dice):
                    rows.append(
                        EvalRow(
                            model=name,
                            case_id=case,
                            class_name=cls,
                            class_group=self.class_group(cls),
                            n_clicks=n,
                            dice=scores.dice[n],
                            nsd=scores.nsd[n],
                            routed_expert=scores.expert if gated and route is None else None,
                            oracle_expert=self.oracle_expert(cls) if gated and route is None else None,
                        )
                    )
        predictor.route, predictor.decoder = None, None
        return rows

    def _eval_step(self, batch: Any, batch_idx: int) -> None:
        if isinstance(batch, dict):  # train/val crops: the click protocol on the crop grid
            self._protocol = ROI_CLICK_PROTOCOL if first_clicks(batch) is not None else BBOX_PROTOCOL
            self._rows.extend(self._roi_rows(batch, batch_idx))
            return
        # whole test volumes: the click-centred protocol through the Predictor (the headline), then the
        # official ground-truth crop for comparison
        self._protocol = CLICK_PROTOCOL
        self._original_grid = True
        self._rows.extend(self._predictor_rows(batch))
        official = as_eval_batch(batch, self.device)
        if official is not None:
            self._bbox_rows.extend(self._roi_rows(official, batch_idx))

    def _eval_end(self, stage: str) -> None:
        if self.trainer.sanity_checking:
            self._reset_eval()
            return
        rows = all_gather_rows(self._rows)
        bbox_rows = all_gather_rows(self._bbox_rows)
        rows, extra = self.finalize_rows(rows, stage)
        run_dir = self.run_dir() / stage  # log_dir broadcasts: every rank calls it
        if not rows:
            self._reset_eval()
            return
        report = build_report(rows, foundation="foundation", moe="moe")
        primary = self.primary_model()
        means = class_average(class_means(rows, "dice")).get(primary, {})
        for k in self.evaluation.click_counts:
            if k in means and not math.isnan(means[k]):
                self.log(f"{stage}/dice@{k}", means[k], rank_zero_only=True)
        finite = [v for v in means.values() if not math.isnan(v)]
        self.log(f"{stage}/dice", sum(finite) / len(finite) if finite else 0.0, rank_zero_only=True)
        acc = report.get("routing_accuracy")
        if acc is not None:
            self.log(f"{stage}/routing_accuracy", float(acc), rank_zero_only=True)
        self.last_report = report
        if self.trainer.is_global_zero:
            reports = [(rows, run_dir, self._protocol, f"sammoe {stage} report")]
            if bbox_rows:
                bbox_rows, _ = self.finalize_rows(bbox_rows, stage)
                title = f"sammoe {stage} report, official ground-truth-crop protocol (optimistic)"
                reports.append((bbox_rows, run_dir / BBOX_FOLDER, BBOX_PROTOCOL, title))
            for part_rows, folder, protocol, title in reports:
                notes = NOTES.format(
                    nsd="no NSD (nsd_tolerance_mm: null)"
                    if self.evaluation.nsd_tolerance_mm is None
                    else f"NSD (tolerance {self.evaluation.nsd_tolerance_mm:g} mm)",
                    grid="original" if self._original_grid else "ROI",
                    clicks="/".join(map(str, self.evaluation.click_counts)),
                    seed=self.evaluation.seed,
                    protocol=protocol,
                )
                files = write_report(
                    part_rows,
                    folder,
                    notes=notes,
                    title=title,
                    extra={"stage": stage, "epoch": int(self.current_epoch), "protocol": protocol, **extra},
                )
                print(f"sammoe: {stage} report written to {files.markdown}")
            self.last_report_dir = run_dir
            log_evaluation(self.trainer, stage, report, self._examples, self.evaluation.roi_spacing)
        self._reset_eval()

    _original_grid = False

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx)

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, Any]]:
        """Masks after the largest click count, clicks simulated from the ground truth: whole test volumes
        through the Predictor (click-centred, original grid), train/val crops on the ROI grid."""
        if not isinstance(batch, dict):
            return self._predict_volumes(batch)
        embeddings = self.encode(batch["image"])
        first = first_clicks(batch)
        out = []
        for b in range(embeddings.shape[0]):
            rollout = evaluation_rollout(
                self.primary_step(batch["image"][b : b + 1]),
                embeddings[b : b + 1],
                batch["label"][b : b + 1],
                click_counts=self.evaluation.click_counts,
                seed=self.evaluation.seed,
                low_res_size=self.backbone.low_res_size,
                first_clicks=None if first is None else (first[0][b : b + 1], first[1][b : b + 1]),
            )
            mask = rollout.masks[max(self.evaluation.click_counts)][0, 0].cpu()
            out.append(
                {
                    "case_id": batch["case_id"][b],
                    "class_name": batch["class_name"][b],
                    "n_clicks": max(self.evaluation.click_counts),
                    "mask": mask,
                }
            )
        return out

    def _predict_volumes(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        from sammoe.inference.protocol import evaluate_target

        predictor = self._predictor_for_eval()
        predictor.route, predictor.decoder = None, None
        out = []
        for item in items:
            if item.get("target") is None or not item["target"].any() or item["class_name"] == BACKGROUND:
                continue
            if self._predictor_image != item["image_path"]:
                predictor.set_image(item["volume"])
                self._predictor_image = item["image_path"]
            scores = evaluate_target(
                predictor,
                item["target"],
                item["volume"].spacing,
                click_counts=self.evaluation.click_counts,
                seed=self.evaluation.seed,
                tolerance_mm=None,
                name=str(item["class_name"]),
            )
            out.append(
                {
                    "case_id": item["case_id"],
                    "class_name": item["class_name"],
                    "n_clicks": max(self.evaluation.click_counts),
                    "mask": scores.mask,
                }
            )
        return out

    def on_validation_epoch_start(self) -> None:
        self._reset_eval()

    def on_test_epoch_start(self) -> None:
        self._reset_eval()

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
