"""Gate training (SAM-Med3D-MoE): the foundation decoder E0 and every expert decoder frozen, only the gate
learns, with cross-entropy toward the sample's task expert (general classes -> E0), clicks simulated as in
training. The selector threshold tau is tuned on validation: the largest average Dice over all classes
among the thresholds whose general-class Dice stays within `max_general_drop` of the foundation's.

Validation/test report foundation, each expert, the MoE and oracle routing, plus routing accuracy and
forgetting. The trained gate is saved as `gate.safetensors` in the run directory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from sammoe.data.clicks import next_click_from_error
from sammoe.errors import ConfigError
from sammoe.eval.calibration import BACKGROUND, TauBudget, background_claims, choose_tau
from sammoe.eval.results import GENERAL, TASK, EvalRow
from sammoe.interact.crop_evaluation import EvalModel, first_clicks
from sammoe.interact.rollout import StepOutput, moe_step
from sammoe.lit.base import EvalSettings, InteractiveModule, export_files
from sammoe.lit.feature_cache import FeatureCache, batch_device, batch_features, serve_cached_crops
from sammoe.lit.schedules import head_optimizer
from sammoe.loading import backbone_source, load_backbone, load_gate, save_gate
from sammoe.loading.experts import assemble_experts
from sammoe.model.gate import LOCAL_RADII, MaskSelector
from sammoe.model.moe import FOUNDATION, SamMoE
from sammoe.model.router import router_summary
from sammoe.model.sam3d import backbone_fingerprint

DEFAULT_TAU_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def selector_step(moe: SamMoE, selector: MaskSelector, image: torch.Tensor | None = None):
    """Step function of the MoE with a given selector (e.g. a candidate threshold) on this encoded crop."""

    def step(emb, points, labels, mask_prompt):
        saved, moe.selector = moe.selector, selector
        try:
            out = moe.step(emb, points, labels, mask_prompt, image=image)
        finally:
            moe.selector = saved
        return StepOutput(out.logits, out.iou, out.route, out.gate_logits)

    return step


class GateTraining(InteractiveModule):
    """Train the SAM-Med3D-MoE gate over the foundation and the expert plugins (see module docstring).

    Args:
        preset: SamMed3D preset of the foundation (`tiny`, `vit_b_ori`).
        checkpoint: the foundation's weights (null = the preset's default: for `tiny` the shipped model;
            for `vit_b_ori` give `sam_med3d_turbo.pth`). Experts must have been finetuned on it.
        experts: expert plugin names to use (exactly those; an unknown or incompatible one is an error);
            null = every usable installed plugin (SAMMOE_EXPERTS narrows the selection).
        expert_files: experts not installed as plugins: name -> the `expert/decoder.safetensors` a finetuning
            run exported (its `.json` sidecar names the task classes); used alone unless `experts` is set.
        gate: start from a trained gate (`gate.safetensors`); e.g. to evaluate one with `sammoe test`.
        routing: `gate` (the joint gate) or `routers` (each expert's own router decides; `sammoe test`
            measures routing over independently trained routers; there is then no gate to fit).
        gate_hidden_dim: width of the gate MLP.
        gate_local_radii: half-sides (voxels) of the cubes around the first positive click whose intensity
            mean and spread the gate also reads ([] = embedding and prompt features only, as in the paper).
        gate_texture: the gate also reads the texture in those cubes relative to the crop's noise
            (``sammoe.model.gate.local_texture_stats``; needs `gate_local_radii`).
        gate_robust_texture: the gate also reads texture statistics that an organ's border cannot fake
            (``sammoe.model.gate.robust_texture_stats``).
        gate_patch_radius: half-side (voxels) of the click's block a CNN reads (``model.click_patch``);
            0: none.
        selector: `threshold` (paper), `top1` or `soft`.
        tau: the threshold before tuning.
        tune_tau: tune tau on validation (threshold selector).
        tau_grid: candidate thresholds.
        max_general_drop: largest allowed drop of the general-class Dice (0-1) against the foundation.
        max_background_claims: largest allowed share of validation background clicks (the data module's
            `background_clicks`) that tau lets an expert claim.
        lr, weight_decay, one_cycle: AdamW for the gate; ``one_cycle``: a one-cycle schedule up to ``lr``.
        evaluate_experts: also evaluate each expert alone and oracle routing (the full comparison table).
        clicks_per_target: random first clicks drawn per target and training step.
        balance_experts: weight the cross-entropy so that every expert's classes count as much in total
            (general data usually outnumbers each task several times).
        click_counts, eval_seed: evaluation protocol (official: 1/3/5/10 clicks, seed 233 per target).
        nsd_tolerance_mm: NSD tolerance (official 1 mm); null skips NSD (the slow metric on a CPU).
        export_path: also write the gate there (e.g. `sammoe/assets/gate_tiny.safetensors`).
        feature_cache: folder of the trunk-feature cache (``sammoe.lit.feature_cache``, shared with router
            training): with click-centred crops each crop is encoded once, not every epoch (pair it with the
            data module's `click_draws`, a fixed set of clicks per target); null: encode every step.
    """

    def __init__(
        self,
        preset: str = "tiny",
        checkpoint: str | None = None,
        experts: list[str] | None = None,
        expert_files: dict[str, str] | None = None,
        gate: str | None = None,
        routing: Literal["gate", "routers"] = "gate",
        gate_hidden_dim: int = 256,
        gate_local_radii: list[int] = list(LOCAL_RADII),  # noqa: B006 (jsonargparse needs a literal default)
        gate_texture: bool = True,
        gate_robust_texture: bool = False,
        gate_patch_radius: int = 0,
        selector: Literal["threshold", "top1", "soft"] = "threshold",
        tau: float = 0.5,
        tune_tau: bool = True,
        tau_grid: list[float] = list(DEFAULT_TAU_GRID),  # noqa: B006 (jsonargparse needs a literal default)
        max_general_drop: float = 0.01,
        max_background_claims: float = 0.02,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        one_cycle: bool = False,
        evaluate_experts: bool = True,
        balance_experts: bool = True,
        clicks_per_target: int = 4,
        export_path: str | None = None,
        click_seed: int = 2023,
        click_counts: Sequence[int] = (1, 3, 5, 10),
        eval_seed: int = 233,
        nsd_tolerance_mm: float | None = 1.0,
        roi_spacing: Sequence[float] = (1.5, 1.5, 1.5),
        overlay_images: bool = True,
        feature_cache: str | None = None,
    ) -> None:
        super().__init__(
            EvalSettings(
                click_counts=tuple(click_counts),
                seed=eval_seed,
                nsd_tolerance_mm=nsd_tolerance_mm,
                roi_spacing=tuple(roi_spacing),
                overlay_images=overlay_images,
            )
        )
        self.save_hyperparameters()
        backbone = load_backbone(checkpoint, preset).requires_grad_(False)
        self.start_weights = backbone_source(preset, checkpoint)
        routers: dict[str, Any] | None = {} if routing == "routers" else None
        decoders, self.class_to_expert = assemble_experts(backbone, experts, expert_files, routers)
        self.moe = SamMoE(
            backbone,
            decoders,
            gate_hidden_dim,
            MaskSelector(selector, tau),
            gate_local_radii,
            gate_texture,
            gate_robust_texture,
            gate_patch_radius,
        )
        if gate is not None and routers is None:
            load_gate(self.moe, gate)
        if routers is not None:
            self.moe.use_routers(routers)
        self.moe.freeze_all_but_gate()
        self.backbone = self.moe.backbone
        self.tau_grid = sorted({float(t) for t in tau_grid})
        self._generator: torch.Generator | None = None
        tag = (backbone_fingerprint(backbone), *self.moe.gate.layout)
        self.cache = None if feature_cache is None else FeatureCache(feature_cache, tag)

    # ------------------------------------------------------------------------------------- routing
    @property
    def expert_names(self) -> list[str]:
        return list(self.moe.expert_names)

    def oracle_expert(self, class_name: str) -> str:
        return self.class_to_expert.get(class_name, FOUNDATION)

    def oracle_index(self, class_names: Sequence[str], device: torch.device) -> torch.Tensor:
        index = {name: i for i, name in enumerate(self.expert_names)}
        return torch.tensor([index[self.oracle_expert(c)] for c in class_names], device=device)

    def class_group(self, class_name: str) -> str:
        return TASK if class_name in self.class_to_expert else GENERAL

    # ------------------------------------------------------------------------------------- training
    def configure_optimizers(self) -> Any:
        return head_optimizer(self, self.moe.gate.parameters())

    def generator(self) -> torch.Generator:
        if self._generator is None:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._generator = torch.Generator().manual_seed(int(self.hparams.click_seed) + rank)
        return self._generator

    def on_train_epoch_start(self) -> None:
        self.moe.backbone.eval()  # frozen parts stay in eval mode; the gate trains (dropout)
        self.moe.experts.eval()
        serve_cached_crops(self, self.cache)

    def on_fit_start(self) -> None:
        if self.moe.routing == "routers":
            raise ConfigError(
                "routing: routers evaluates the experts' own routers and has no gate to fit; run `sammoe "
                "test`, "
                "or train each router with configs/router.yaml"
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the gate toward each target's expert (background clicks: the foundation).

        The gate reads the target's first positive click (`sammoe.model.gate.gate_features`), never the
        later ones, so no decoder iteration runs. With click-centred crops (the default) that click is the
        one the crop is centred on, as at inference: one sample per target and step. With ground-truth crops
        (`crop: bbox`) every step draws `clicks_per_target` uniformly random foreground clicks per target.
        """
        target = self.oracle_index(batch["class_name"], batch_device(batch))
        if first_clicks(batch) is not None:  # a crop whose features are cached comes without its image
            logits, targets = self.moe.gate(self.features(batch)).float(), target
        else:
            image = batch["image"]
            with torch.no_grad():
                embeddings = self.moe.encode(image)
            empty, gt = torch.zeros_like(batch["label"].bool()), batch["label"].bool()
            draws = [
                next_click_from_error(empty, gt, self.generator())
                for _ in range(self.hparams.clicks_per_target)
            ]
            logits = torch.cat(
                [self.moe.gate_logits(embeddings, pts, lab, image).float() for pts, lab in draws]
            )
            targets = target.repeat(len(draws))
        loss = F.cross_entropy(logits, targets, weight=self._expert_weights(logits.device))
        acc = (logits.argmax(-1) == targets).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["class_name"]))
        self.log("train/gate_accuracy", acc, prog_bar=True, batch_size=len(batch["class_name"]))
        return loss

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """The gate's routing features of each click-centred crop (from the cache when there is one)."""
        return batch_features(self.cache, self.moe.backbone, batch, self.moe.gate.layout)

    def on_train_epoch_end(self) -> None:
        if self.cache is not None:
            share = self.cache.end_epoch(write=self.trainer.is_global_zero)
            self.log("train/feature_cache_hits", share, rank_zero_only=True)

    def _expert_weights(self, device: torch.device) -> torch.Tensor | None:
        """Inverse frequency of each expert among the data module's classes (None when unknown or off)."""
        classes = getattr(getattr(self._trainer, "datamodule", None), "classes", None)
        if not self.hparams.balance_experts or not classes:
            return None
        counts = torch.bincount(self.oracle_index(list(classes), device), minlength=len(self.expert_names))
        present = counts > 0
        return torch.where(present, present.sum() / counts.clamp_min(1).float() / len(classes), 0.0)

    # ------------------------------------------------------------------------------------- evaluation
    def _tuning(self) -> bool:
        return bool(
            self.hparams.tune_tau
            and self.moe.routing == "gate"
            and self.moe.selector.mode == "threshold"
            and self._trainer is not None
            and self.trainer.state.stage is not None
            and self.trainer.state.stage.value in ("validate", "sanity_check")
        )

    def eval_models(self, batch: dict[str, Any]) -> list[EvalModel]:
        names = self.expert_names
        image = batch["image"]
        oracle = self.oracle_index(batch["class_name"], image.device)

        def crop(b: int) -> torch.Tensor:
            return image[b : b + 1]

        models = []
        if self.hparams.evaluate_experts:
            models += [
                EvalModel(name, (lambda b, k=k: moe_step(self.moe, k, crop(b))))
                for k, name in enumerate(names)
            ]
            models.append(
                EvalModel(
                    "oracle",
                    lambda b: moe_step(self.moe, int(oracle[b]), crop(b)),
                    same_as=lambda b: names[int(oracle[b])],
                )
            )
        else:
            models.append(EvalModel(FOUNDATION, lambda b: moe_step(self.moe, 0, crop(b))))
        if self._tuning():
            for tau in self.tau_grid:
                sel = MaskSelector("threshold", tau)
                models.append(
                    EvalModel(
                        f"moe@{tau:g}",
                        (lambda b, s=sel: selector_step(self.moe, s, crop(b))),
                        names,
                        probe_route=True,
                    )
                )
        else:
            models.append(EvalModel("moe", lambda b: moe_step(self.moe, image=crop(b)), names))
        return models

    def primary_model(self) -> str:
        return "moe"

    def predictor_model(self) -> torch.nn.Module:
        return self.moe

    def predictor_routes(self, class_name: str) -> list[tuple[str, str | None, torch.nn.Module | None]]:
        if not self.hparams.evaluate_experts:
            return [(FOUNDATION, FOUNDATION, None), ("moe", None, None)]
        singles = [(name, name, None) for name in self.expert_names]
        return [*singles, ("oracle", self.oracle_expert(class_name), None), ("moe", None, None)]

    def primary_step(self, image: torch.Tensor):
        return moe_step(self.moe, image=image)

    def choose_tau(self, rows: list[EvalRow]) -> tuple[float, dict[str, dict[str, float]]]:
        """The threshold with the best class-average Dice among those within `max_general_drop` of the
        foundation on every general class and routing at most `max_background_claims` of the background
        clicks to an expert (``sammoe.eval.calibration.choose_tau``); the current tau without candidates."""
        budget = TauBudget(self.hparams.max_general_drop, self.hparams.max_background_claims)
        tau, search = choose_tau(rows, self.tau_grid, self.class_group, budget)
        return (float(self.moe.selector.tau) if tau is None else tau), search

    def finalize_rows(self, rows: list[EvalRow], stage: str) -> tuple[list[EvalRow], dict[str, Any]]:
        extra: dict[str, Any] = {
            "routing": self.moe.routing,
            "selector": self.moe.selector.mode,
            "experts": self.expert_names,
        }
        if self.moe.routing == "routers":
            extra["routers"] = router_summary(self.moe.routers)
        candidates = [r for r in rows if r.model.startswith("moe@")]
        if candidates:
            tau, search = self.choose_tau(rows)
            self.moe.selector = MaskSelector(self.moe.selector.mode, tau)
            chosen = f"moe@{tau:g}"
            rows = [r for r in rows if not r.model.startswith("moe@")] + [
                EvalRow(**{**r.to_dict(), "model": "moe"}) for r in candidates if r.model == chosen
            ]
            extra["tau_search"] = search
            self.log(f"{stage}/tau", float(tau), rank_zero_only=True)
        extra["tau"] = float(self.moe.selector.tau)
        claims = background_claims(rows, "moe")
        if claims is not None:  # background clicks test routing only; they have no target to score
            extra["background_claims"] = claims
            self.log(f"{stage}/background_claims", claims, rank_zero_only=True)
            rows = [r for r in rows if r.class_name != BACKGROUND]
        return rows, extra

    # ------------------------------------------------------------------------------------- persistence
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["sammoe_selector"] = {"mode": self.moe.selector.mode, "tau": float(self.moe.selector.tau)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sel = checkpoint.get("sammoe_selector")
        if sel:
            self.moe.selector = MaskSelector(sel["mode"], float(sel["tau"]))

    @staticmethod
    def export_targets(args: Any, run_dir: Path | None) -> dict[str, Path]:
        """Every file the export writes (name for messages -> path), from the model's init args: the run
        folder's (when ``run_dir`` is known) and ``export_path``; ``sammoe fit`` checks them before
        training."""
        return export_files(args, run_dir, Path("gate.safetensors"))

    def on_train_end(self) -> None:
        run_dir = self.run_dir()  # broadcasts: every rank
        if not self.trainer.is_global_zero:
            return
        written = []
        for target in self.export_targets(self.hparams, run_dir).values():
            target.parent.mkdir(parents=True, exist_ok=True)
            written.append(save_gate(self.moe, target))
        for path in written:
            print(f"sammoe: gate (tau={self.moe.selector.tau:g}) saved to {path}")
