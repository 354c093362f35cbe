"""Router training: one expert's own router (``sammoe.model.router``), one-vs-rest with the trunk frozen.

Positives are first clicks on the expert's task classes (``task.classes``); negatives are first clicks on the
general classes (``data.general_classes``) and on unlabelled voxels (``data.background_clicks``), never
another expert's data. Each click is the centre of its crop, as at inference. Validation fits a temperature
to the held-out logits (calibration), then picks the lowest threshold whose false-claim rates on background
clicks and on each general class stay within ``max_false_claims`` (the most recall that allows), and reports
recall and the rates. The router is written to ``<run dir>/expert/router.safetensors``, next to the
decoder the finetuning run with the same overlay exported there.

    sammoe fit --config configs/router.yaml --config configs/experts/spinal_cord.yaml
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from sammoe.errors import ConfigError
from sammoe.eval.calibration import BACKGROUND
from sammoe.files import write_text
from sammoe.interact.crop_evaluation import first_clicks
from sammoe.lit.base import export_files
from sammoe.lit.feature_cache import FeatureCache, batch_device, batch_features, serve_cached_crops
from sammoe.lit.schedules import head_optimizer
from sammoe.loading import load_backbone
from sammoe.loading.router import ROUTER_FILE, save_router
from sammoe.model.gate import LOCAL_RADII
from sammoe.model.router import ExpertRouter
from sammoe.model.sam3d import backbone_fingerprint

THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, steps: int = 100) -> float:
    """The temperature T minimising the binary cross-entropy of logits / T (Guo et al. 2017),
    in [0.05, 20]."""
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().exp())
    return min(max(value, 0.05), 20.0) if math.isfinite(value) else 1.0


def choose_threshold(
    probs: torch.Tensor,
    groups: list[str],
    max_false_claims: float,
    grid=THRESHOLD_GRID,
    classes: list[str] | None = None,
) -> tuple[float, dict[str, float]]:
    """The lowest threshold of ``grid`` whose false-claim rates on ``general`` and ``background`` clicks are
    both <= ``max_false_claims`` (the highest grid value when none is), and its recall / rates.

    With ``classes`` (each click's class name) the general limit holds for every general class on its own
    (``false_claims_general_worst``): a budget pooled over all general clicks can be spent on the one organ
    the expert's targets live in. Measured through `sammoe test` (seed 5, routers on 480 cases): a pooled
    2% (threshold 0.05) let the lesion router take 4 of 60 livers, 4.9 Dice points off the liver class.
    """

    def rates(threshold: float) -> dict[str, float]:
        chosen = [float(p) >= threshold for p in probs.tolist()]

        def share(picked: list[bool]) -> float:
            return sum(picked) / len(picked) if picked else math.nan

        out = {
            key: share([c for c, g in zip(chosen, groups) if g == group])
            for key, group in (
                ("recall", "task"),
                ("false_claims_general", "general"),
                ("false_claims_background", "background"),
            )
        }
        if classes is not None:
            general = sorted({c for c, g in zip(classes, groups) if g == "general"})
            per_class = [share([c for c, n in zip(chosen, classes) if n == name]) for name in general]
            out["false_claims_general_worst"] = max(per_class, default=math.nan)
        return out

    for threshold in grid:
        measured = rates(threshold)
        worst = max((v for k, v in measured.items() if k != "recall" and not math.isnan(v)), default=0.0)
        if worst <= max_false_claims:
            return float(threshold), measured
    return float(grid[-1]), rates(grid[-1])


class RouterTraining(L.LightningModule):
    """Train an expert's router (see the module docstring).

    Args:
        name: the expert's name (its plugin name; the overlay `configs/experts/NAME.yaml` sets it).
        task: the expert's task as in its manifest; its `classes` are the positives.
        preset, checkpoint: the frozen foundation the expert was finetuned on (null: the preset's default).
        hidden_dim, dropout: the router MLP.
        local_radii, texture, robust_texture: the local statistics the router reads around the click (as
            the gate's; ``sammoe.model.gate.routing_features``).
        patch_radius: half-side (voxels) of the block around the click that a small CNN reads
            (``sammoe.model.click_patch``); 0: none.
        trunk: read the trunk's features (image embedding, click cell and token); false: only the image
            around the click.
        lr, weight_decay: AdamW; with ``one_cycle`` the learning rate follows a one-cycle schedule up to
            ``lr`` over the run (per step).
        general_weight: weight of the general-class clicks in the loss (the negatives that look most like a
            task target, e.g. the liver a lesion lives in).
        max_false_claims: largest share of validation background clicks, and of each general class's clicks,
            the router may claim.
        feature_cache: folder of the trunk-feature cache (``sammoe.lit.feature_cache``); null: encode every
            crop every step. Pair it with ``data.click_draws`` so that crops repeat.
        export_path: also write the router there.
    """

    def __init__(
        self,
        name: str,
        task: dict[str, Any] | None = None,
        preset: str = "tiny",
        checkpoint: str | None = None,
        hidden_dim: int = 128,
        dropout: float = 0.1,
        local_radii: list[int] = list(LOCAL_RADII),  # noqa: B006 (jsonargparse needs a literal default)
        texture: bool = True,
        robust_texture: bool = False,
        patch_radius: int = 0,
        trunk: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        one_cycle: bool = False,
        general_weight: float = 1.0,
        max_false_claims: float = 0.02,
        feature_cache: str | None = None,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.task = dict(task or {})
        self.positives = set((self.task.get("classes") or {}).keys())
        if not self.positives:
            raise ConfigError(
                f"router {name!r}: model.init_args.task.classes names no class; add the expert's overlay "
                f"(--config configs/experts/{name}.yaml)"
            )
        if not general_weight > 0.0:
            raise ConfigError(f"general_weight must be positive, got {general_weight!r}")
        if not 0.0 <= max_false_claims <= 1.0:
            raise ConfigError(f"max_false_claims must lie in [0, 1], got {max_false_claims!r}")
        self.backbone = load_backbone(checkpoint, preset).requires_grad_(False).eval()
        self.router = ExpertRouter(
            self.backbone.config.prompt_embed_dim,
            hidden_dim,
            dropout,
            local_radii,
            texture,
            robust_texture,
            patch_radius,
            trunk,
        )
        self._val: list[tuple[torch.Tensor, list[str]]] = []  # (logits, class names) per batch
        self.metrics: dict[str, float] = {}
        tag = (backbone_fingerprint(self.backbone), *self.router.layout)
        self.cache = None if feature_cache is None else FeatureCache(feature_cache, tag)

    # The overlay configs/experts/NAME.yaml puts the router's run in the expert's finetuning run directory
    # (so the router lands next to the decoder it routes to): its config and checkpoints get names of their
    # own.
    config_filename = "router_config.yaml"

    def configure_callbacks(self) -> list:
        from lightning.pytorch.callbacks import ModelCheckpoint

        if self._trainer is None or self.trainer.checkpoint_callback is None:
            return []
        previous = self.trainer.checkpoint_callback
        checkpoint = ModelCheckpoint(dirpath=previous.dirpath, filename="router-{epoch}", save_last=True)
        checkpoint.CHECKPOINT_NAME_LAST = "router-last"
        return [checkpoint]

    def group(self, class_name: str) -> str:
        if class_name in self.positives:
            return "task"
        return "background" if class_name == BACKGROUND else "general"

    def configure_optimizers(self) -> Any:
        return head_optimizer(self, self.router.parameters())

    def on_train_epoch_start(self) -> None:
        self.backbone.eval()  # frozen; the router trains (dropout)
        serve_cached_crops(self, self.cache)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """Routing features of each crop's centring click (from the cache when there is one)."""
        if first_clicks(batch) is None:
            raise ConfigError("router training needs click-centred crops: set data.init_args.crop: click")
        return batch_features(self.cache, self.backbone, batch, self.router.layout)

    def targets(self, batch: dict[str, Any]) -> torch.Tensor:
        names = batch["class_name"]
        return torch.tensor([float(c in self.positives) for c in names], device=batch_device(batch))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.router(self.features(batch))
        targets = self.targets(batch)
        weights = [
            self.hparams.general_weight if self.group(c) == "general" else 1.0 for c in batch["class_name"]
        ]
        weights = torch.tensor(weights, device=logits.device, dtype=logits.dtype)
        loss = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights).mean()
        accuracy = ((logits > 0).float() == targets).float().mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=len(targets))
        self.log("train/accuracy", accuracy, prog_bar=True, batch_size=len(targets))
        return loss

    def on_train_epoch_end(self) -> None:
        if self.cache is not None:
            share = self.cache.end_epoch(write=self.trainer.is_global_zero)
            self.log("train/feature_cache_hits", share, rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.router(self.features(batch)).float().cpu()
        self._val.append((logits, list(batch["class_name"])))

    def on_validation_epoch_end(self) -> None:
        logits = torch.cat([v[0] for v in self._val]) if self._val else torch.zeros(0)
        classes = [c for v in self._val for c in v[1]]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (logits, classes))
            logits = torch.cat([g[0] for g in gathered])
            classes = [x for g in gathered for x in g[1]]
        groups = [self.group(c) for c in classes]
        if not groups or "task" not in groups:
            return
        targets = torch.tensor([float(g == "task") for g in groups])
        temperature = fit_temperature(logits, targets)
        probs = torch.sigmoid(logits / temperature)
        threshold, measured = choose_threshold(probs, groups, self.hparams.max_false_claims, classes=classes)
        self.router.temperature.fill_(temperature)
        self.router.threshold.fill_(threshold)
        self.metrics = {**measured, "temperature": temperature, "threshold": threshold}
        counts = {g: groups.count(g) for g in ("task", "general", "background")}
        for key, value in self.metrics.items():
            if not math.isnan(value):
                self.log(f"val/{key}", value, rank_zero_only=True)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            report = {"expert": self.hparams.name, **self.metrics, "clicks": counts}
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "val"
            folder.mkdir(parents=True, exist_ok=True)
            write_text(folder / "router.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
            print(
                f"sammoe: router {self.hparams.name}: recall {measured['recall']:.3f}, false claims "
                f"general {measured['false_claims_general']:.3f} (worst class "
                f"{measured['false_claims_general_worst']:.3f}) / background "
                f"{measured['false_claims_background']:.3f} at threshold {threshold:g} "
                f"(temperature {temperature:.2f}; {counts})"
            )

    @staticmethod
    def export_targets(args: Any, run_dir: Path | None) -> dict[str, Path]:
        """Every file the export writes (name for messages -> path), from the model's init args: the run
        folder's (when ``run_dir`` is known) and ``export_path``; ``sammoe fit`` checks them before
        training."""
        return export_files(args, run_dir, Path("expert") / ROUTER_FILE)

    def on_train_end(self) -> None:
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        targets = list(self.export_targets(self.hparams, run_dir).values())
        classes = dict(self.task.get("classes") or {})
        metrics = {k: v for k, v in self.metrics.items() if not math.isnan(v)}
        if not metrics:
            warnings.warn(
                f"router {self.hparams.name!r}: no validation ran, so it is not calibrated (temperature 1, "
                "threshold 0.5) and records no recall; keep a validation split (data.val_fraction > 0)",
                stacklevel=2,
            )
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_router(
                self.router,
                path,
                name=self.hparams.name,
                classes=classes,
                backbone=self.backbone,
                metrics=metrics,
            )
            print(f"sammoe: router of {self.hparams.name!r} saved to {path}")
