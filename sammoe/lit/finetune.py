"""Interactive finetuning of SAM-Med3D with the official recipe: expert SFT, or pretraining the whole model.

`trainable`:
- `decoder` (expert SFT, the MoE paper's experts): image encoder and prompt encoder frozen, the encoder run
  under no_grad; only the mask decoder learns. Exported as what `sammoe experts package` reads.
- `decoder+prompt`: also tunes the prompt encoder (the expert then no longer shares the foundation's frozen
  trunk fingerprint, so it cannot join a gate over that foundation).
- `all`: everything learns (used to pretrain the tiny foundation model on the general classes); the prompt
  encoder and decoder run at `decoder_lr_scale` (official: 0.1) times `lr`.

Per batch (official `train.py`): encode once; 11 decoder iterations, each with one click drawn uniformly
from the error region of the previous prediction, previous low-res logits fed back as the mask prompt, two
point-free iterations; MONAI DiceCE (sigmoid, squared denominators) summed over the iterations; AdamW with
weight decay 0.1.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from sammoe.eval.results import GENERAL, TASK
from sammoe.interact.crop_evaluation import EvalModel, first_clicks
from sammoe.interact.rollout import decoder_step, training_rollout
from sammoe.lit.base import EvalSettings, InteractiveModule, export_files
from sammoe.loading import backbone_source, load_backbone, save_backbone, save_tensors
from sammoe.model.sam3d import backbone_fingerprint

Trainable = Literal["decoder", "decoder+prompt", "all"]


def dice_ce_loss(kind: str = "dicece"):
    """The official loss: MONAI DiceCELoss(sigmoid, squared_pred) (BCE term for one channel), or Dice only
    (what MONAI <= 1.2, pinned by the original release, effectively computed)."""
    from monai.losses import DiceCELoss, DiceLoss

    if kind == "dicece":
        return DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")
    if kind == "dice":
        return DiceLoss(sigmoid=True, squared_pred=True, reduction="mean")
    raise ValueError(f"loss must be 'dicece' or 'dice', got {kind!r}")


class ExpertFinetune(InteractiveModule):
    """Finetune SAM-Med3D interactively (expert SFT by default). See the module docstring.

    Args:
        name: the model's name in reports (the expert's name; `foundation` when pretraining it).
        preset: SamMed3D preset (`tiny`, `vit_b_ori`).
        checkpoint: starting weights: null = the preset's default (for `tiny` the shipped foundation model),
            `seeded` = reproducible random initialisation, or a path (`sam_med3d_turbo.pth`, `.safetensors`).
        trainable: `decoder`, `decoder+prompt` or `all`.
        task: the expert's task as in its plugin manifest, e.g. {"classes": {"spinal_cord": 5},
            "modality": "CT", "dataset": "phantom"}; its classes form the `task` group in reports.
        lr: learning rate of the image encoder when training `all`, else of the trained parts.
        decoder_lr_scale: prompt encoder / decoder lr = lr * scale when training `all` (official 0.1).
        weight_decay, betas: AdamW (official 0.1, (0.9, 0.999)).
        lr_milestones, lr_gamma: MultiStepLR per epoch (official [120, 180], 0.1); empty = constant lr.
        num_iterations: decoder iterations per batch (official 11).
        accumulate_clicks: feed all clicks so far (official: only the newest).
        loss: `dicece` or `dice`.
        compare_foundation: also evaluate the starting decoder as `foundation` (decoder SFT only), so the
            report shows the expert's gain on its task and its forgetting on general classes.
        click_counts, eval_seed: evaluation protocol (official: 1/3/5/10 clicks, seed 233 per target).
        nsd_tolerance_mm: NSD tolerance (official 1 mm); null skips NSD (the slow metric on a CPU).
        export_path: also write the trained artifact there (decoder: `.safetensors` + `.json` sidecar for
            `sammoe experts package`; all: the whole model as `.safetensors`).
        click_seed: training click-simulation seed (offset by the DDP rank).
    """

    def __init__(
        self,
        name: str = "expert",
        preset: str = "tiny",
        checkpoint: str | None = None,
        trainable: Trainable = "decoder",
        task: dict[str, Any] | None = None,
        lr: float = 8e-5,
        decoder_lr_scale: float = 0.1,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_milestones: list[int] | None = None,
        lr_gamma: float = 0.1,
        num_iterations: int = 11,
        accumulate_clicks: bool = False,
        loss: Literal["dicece", "dice"] = "dicece",
        compare_foundation: bool = True,
        export_path: str | None = None,
        click_seed: int = 2023,
        click_counts: Sequence[int] = (1, 3, 5, 10),
        eval_seed: int = 233,
        nsd_tolerance_mm: float | None = 1.0,
        roi_spacing: Sequence[float] = (1.5, 1.5, 1.5),
        overlay_images: bool = True,
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
        if trainable not in ("decoder", "decoder+prompt", "all"):
            raise ValueError(f"trainable must be decoder, decoder+prompt or all, got {trainable!r}")
        self.save_hyperparameters()
        self.name = name
        self.trainable = trainable
        self.task = dict(task or {})
        self._task_classes = set((self.task.get("classes") or {}).keys())
        self.backbone = load_backbone(checkpoint, preset).train()
        self.start_weights = backbone_source(preset, checkpoint)
        self.loss_fn = dice_ce_loss(loss)
        self.foundation_decoder = None
        if compare_foundation and trainable == "decoder" and name != "foundation":
            self.foundation_decoder = copy.deepcopy(self.backbone.mask_decoder).requires_grad_(False)
        self._freeze()
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------------------------- parameters
    @property
    def encoder_frozen(self) -> bool:
        return self.trainable != "all"

    def _freeze(self) -> None:
        bb = self.backbone
        bb.image_encoder.requires_grad_(not self.encoder_frozen)
        bb.prompt_encoder.requires_grad_(self.trainable != "decoder")
        bb.mask_decoder.requires_grad_(True)
        # The recipe's loss never reaches these (no IoU loss; a mask prompt is always fed): the official run
        # leaves them unchanged too. Freezing them lets plain DDP run without find_unused_parameters.
        bb.mask_decoder.iou_prediction_head.requires_grad_(False)
        bb.prompt_encoder.no_mask_embed.requires_grad_(False)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        bb = self.backbone
        if self.trainable == "all":
            groups = [
                {"params": list(bb.image_encoder.parameters()), "lr": hp.lr},
                {
                    "params": [*bb.prompt_encoder.parameters(), *bb.mask_decoder.parameters()],
                    "lr": hp.lr * hp.decoder_lr_scale,
                },
            ]
        else:
            params = list(bb.mask_decoder.parameters())
            if self.trainable == "decoder+prompt":
                params += list(bb.prompt_encoder.parameters())
            groups = [{"params": params, "lr": hp.lr}]
        for group in groups:
            group["params"] = [p for p in group["params"] if p.requires_grad]
        optimizer = torch.optim.AdamW(groups, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if not hp.lr_milestones:
            return optimizer
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(hp.lr_milestones), hp.lr_gamma)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ------------------------------------------------------------------------------------- training
    def generator(self) -> torch.Generator:
        if self._generator is None:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._generator = torch.Generator().manual_seed(int(self.hparams.click_seed) + rank)
        return self._generator

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        if self.encoder_frozen:
            with torch.no_grad():
                return self.backbone.image_encoder(image)
        return self.backbone.image_encoder(image)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, gt = batch["image"], batch["label"].float()
        rollout = training_rollout(
            decoder_step(self.backbone),
            self.embed(image),
            gt,
            self.loss_fn,
            self.generator(),
            num_iterations=self.hparams.num_iterations,
            accumulate_clicks=self.hparams.accumulate_clicks,
            low_res_size=self.backbone.low_res_size,
            first_clicks=first_clicks(batch),
        )
        with torch.no_grad():
            pred, target = rollout.logits > 0, gt > 0.5
            inter = (pred & target).flatten(1).sum(1).float()
            denom = (pred.flatten(1).sum(1) + target.flatten(1).sum(1)).float().clamp_min(1)
            train_dice = (2 * inter / denom).mean()
        bsz = image.shape[0]
        self.log("train/loss", rollout.loss, prog_bar=True, batch_size=bsz)
        self.log("train/dice", train_dice, prog_bar=True, batch_size=bsz)
        return rollout.loss

    # ------------------------------------------------------------------------------------- evaluation
    def eval_models(self, batch: dict[str, Any]) -> list[EvalModel]:
        models = [EvalModel(self.name, lambda b: decoder_step(self.backbone))]
        if self.foundation_decoder is not None:
            models.append(
                EvalModel("foundation", lambda b: decoder_step(self.backbone, self.foundation_decoder))
            )
        return models

    def primary_model(self) -> str:
        return self.name

    def predictor_model(self) -> torch.nn.Module:
        return self.backbone

    def predictor_routes(self, class_name: str) -> list[tuple[str, str | None, torch.nn.Module | None]]:
        models = [(self.name, None, None)]
        if self.foundation_decoder is not None:
            models.append(("foundation", None, self.foundation_decoder))
        return models

    def class_group(self, class_name: str) -> str:
        return TASK if class_name in self._task_classes else GENERAL

    def primary_step(self, image: torch.Tensor):
        return decoder_step(self.backbone)

    # ------------------------------------------------------------------------------------- export
    def export_metadata(self) -> dict[str, Any]:
        """The JSON sidecar `sammoe experts package` reads beside the decoder's .safetensors."""
        reported: dict[str, float] = {}
        if self.last_report is not None:
            per_class = self.last_report.get("models", {}).get(self.name, {})
            for cls, by_k in per_class.items():
                if cls in self._task_classes and by_k:
                    key = "5" if "5" in by_k else max(by_k, key=int)
                    if by_k[key] is not None:
                        reported[cls] = float(by_k[key])
        config = {k: v for k, v in self.hparams.items() if not str(k).startswith("_")}
        return {
            "preset": self.hparams.preset,
            "task": self.task,
            "backbone_fingerprint": backbone_fingerprint(self.backbone),
            "description": f"SAM-Med3D {self.hparams.preset} expert decoder '{self.name}' "
            f"finetuned on {self.task.get('dataset') or 'its task data'}",
            "provenance": {
                "finetuned": True,
                "training_data": self.task.get("dataset") or "unknown",
                "config": json.loads(json.dumps(config, default=str)),
                "reported_dice": reported,
                "notes": f"{self.trainable} finetuned from {self.start_weights} for "
                f"{self.current_epoch} epochs ({self.global_step} steps) with sammoe.",
            },
        }

    def export(self, target: Path) -> Path:
        """Write the trained artifact to `target` (a .safetensors path); returns it."""
        from sammoe.files import write_text

        if self.trainable == "all":
            return save_backbone(self.backbone, target)
        state = {k: v.detach().float() for k, v in self.backbone.mask_decoder.state_dict().items()}
        save_tensors(state, target)
        write_text(target.with_suffix(".json"), json.dumps(self.export_metadata(), indent=2) + "\n")
        return target

    @staticmethod
    def export_targets(args: Any, run_dir: Path | None) -> dict[str, Path]:
        """Every file the export writes (name for messages -> path), from the model's init args: the run
        folder's (when ``run_dir`` is known) and ``export_path``, a decoder's with its ``.json`` sidecar.
        ``sammoe fit`` holds them against the run's inputs before training."""
        decoder = args.get("trainable", "decoder") != "all"
        default = _default_export(Path(), args.get("trainable", "decoder"))
        found = export_files(args, run_dir, default)
        if decoder:
            found.update(
                {f"{key} (its .json sidecar)": p.with_suffix(".json") for key, p in list(found.items())}
            )
        return found

    def on_train_end(self) -> None:
        run_dir = self.run_dir()  # broadcasts: every rank
        if not self.trainer.is_global_zero:
            return
        default = _default_export(run_dir, self.trainable)
        written = [self.export(default)]
        if self.hparams.export_path:
            written.append(self.export(Path(self.hparams.export_path)))
        for path in written:
            print(f"sammoe: exported {path}")


def _default_export(run_dir: Path, trainable: str) -> Path:
    """Where a finetuning run exports in its run folder: the whole model, or the expert's decoder."""
    return run_dir / ("model.safetensors" if trainable == "all" else "expert/decoder.safetensors")
