"""The LightningDataModule of training and evaluation (``SegDataModule``).

Crops are placed by the ROI policy (``sammoe.interact.roi``): centred on a click on the target, as at
inference (``crop="click"``), or around the ground truth's box (``crop="bbox"``, the official protocol, for
comparisons only). Cases come from the preprocessing cache (``sammoe.data.cache``); crop, clamp,
z-normalisation and random flips run online on its memory-mapped arrays (only the crop is read). The
datasets themselves are in ``sammoe.lit.crop_datasets``.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from sammoe.data.cache import PreprocessCache
from sammoe.data.datasets import Case, CaseIndex, ClassRef, build_index
from sammoe.data.io import check_declared
from sammoe.data.preprocess import Preprocessor
from sammoe.errors import ConfigError, DataError
from sammoe.eval.calibration import BACKGROUND
from sammoe.interact.roi import check_crop_mode
from sammoe.lit.crop_datasets import (
    BACKGROUND_VALUE,
    BORDER,
    BORDER_VALUE,
    CaseDataset,
    CropSettings,
    TargetDataset,
    collate_cases,
    declared_values,
)


class SegDataModule(L.LightningDataModule):
    """Binary-target 3D crops from nnU-Net v2 / MSD / SAM-Med3D datasets, SAM-Med3D preprocessing, cached.

    Args:
        roots: dataset root folder(s).
        classes: class names (or ``dataset/name``) to train on; None: every class.
        datasets: restrict to these dataset names; None: all.
        crop_size: cubic crop side (128 for SAM-Med3D, 64 for the tiny model).
        spacing: target spacing in mm (one value or three).
        batch_size, num_workers, pin_memory: DataLoader settings.
        cache_dir: preprocessing cache folder; None: no cache (resample every time).
        seed: seeds the case-level train/val split.
        val_fraction: share of training cases held out for validation (split by case, never by class).
        ct_clamp: (low, high) intensity clamp before normalisation, e.g. [-1000, 1000]; None: no clamp.
        flips: random flips along the three axes (training only).
        min_voxels: a target needs at least this many voxels after resampling (official: 1000 in training).
        on_empty: "skip" (use the next target) or "error" for targets below ``min_voxels``.
        channel: image channel (nnU-Net ``_000X`` suffix / MSD 4D index).
        eval_split: cases for ``test``/``predict``: "test" (imagesTs with labels) or "val".
        crop: ROI policy of train/val crops (``sammoe.interact.roi``): "click" (default; centred on a click
            on the target, as at inference) or "bbox" (the official ground-truth crop, for comparisons only).
        jitter: training crops are shifted by up to this many voxels per axis from the click ("click" only).
        background_clicks: per train/val case, this many extra targets that click an unlabelled voxel
            (class ``background``, empty label): what teaches a gate to leave such clicks to the foundation.
        first_click_seed: seed of the validation clicks and of the test split's first clicks (official: 233).
        click_draws: training crops per target: 0 = a new click every time; N = one of N fixed clicks per
            target (seeded by ``seed``), so router/gate training can cache features (``feature_cache``).
        general_classes: classes loaded in addition to ``classes`` (router training: the general structures
            a router learns to leave to the foundation; a config overlay that sets ``classes`` keeps them).
        border_clicks: per training case, this many extra targets that click a ``general_classes`` voxel
            within ``border_mm`` of a ``classes`` voxel (the liver beside a lesion): the negatives a router
            confuses most, which uniform clicks on a large organ almost never give. Validation keeps uniform
            clicks, so the false-claim rates it measures stay those of real clicks.
        border_mm: how near to a task target a border click lies.

    Batches from train/val loaders: dict(image (B,1,S,S,S) float32, label (B,1,S,S,S) float32, case_id,
    dataset, class_name, label_value, start). test/predict loaders yield lists of ``CaseDataset`` items.
    DDP: plain map-style datasets, so Lightning's automatic DistributedSampler shards them.
    """

    def __init__(
        self,
        roots: list[str] | str,
        classes: list[str] | None = None,
        datasets: list[str] | None = None,
        crop_size: int = 128,
        spacing: float | list[float] = 1.5,
        batch_size: int = 2,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        val_fraction: float = 0.2,
        ct_clamp: list[float] | None = None,
        flips: bool = True,
        min_voxels: int = 1,
        on_empty: str = "skip",
        channel: int = 0,
        eval_split: str = "test",
        pin_memory: bool = False,
        crop: str = "click",
        jitter: int = 0,
        background_clicks: int = 0,
        first_click_seed: int = 233,
        click_draws: int = 0,
        general_classes: list[str] | None = None,
        border_clicks: int = 0,
        border_mm: float = 6.0,
    ) -> None:
        super().__init__()
        if crop_size < 16 or crop_size % 16:
            raise ConfigError(
                f"data: crop_size {crop_size} must be a positive multiple of the 16-voxel patch (64 tiny, "
                f"128 vit_b_ori)"
            )
        if batch_size < 1 or min(num_workers, jitter, background_clicks, click_draws, border_clicks) < 0:
            raise ConfigError(
                "data: batch_size must be >= 1 and num_workers, jitter, background_clicks, click_draws, "
                f"border_clicks >= 0; got {batch_size}, {num_workers}, {jitter}, {background_clicks}, "
                f"{click_draws}, {border_clicks}"
            )
        if border_clicks and not (general_classes and classes and set(classes) - set(general_classes)):
            raise ConfigError(
                "data: border_clicks need classes (the task) and general_classes (the organs around it); "
                f"got classes={classes}, general_classes={general_classes}"
            )
        if not border_mm > 0:
            raise ConfigError(f"data: border_mm must be positive, got {border_mm!r}")
        self.border_clicks, general = int(border_clicks), list(general_classes or [])
        self.border = ([c for c in classes or [] if c not in general], general, float(border_mm))
        self.click_draws = int(click_draws)
        self.crop, self.jitter = check_crop_mode(crop), int(jitter)
        self.background_clicks, self.first_click_seed = int(background_clicks), int(first_click_seed)
        self.save_hyperparameters()
        self.roots = [roots] if isinstance(roots, str) else list(roots)
        if general_classes and classes is not None:
            classes = [*classes, *(c for c in general_classes if c not in classes)]
        self.classes, self.datasets = classes, datasets
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.seed, self.val_fraction = seed, val_fraction
        self.flips, self.min_voxels, self.on_empty = flips, min_voxels, on_empty
        self.channel, self.eval_split = channel, eval_split
        self.preprocessor = Preprocessor(target_spacing=spacing, crop_size=crop_size, ct_clamp=ct_clamp)
        self.cache = PreprocessCache(cache_dir, self.preprocessor)
        self.index: CaseIndex | None = None
        self.train_targets: list[tuple[Case, ClassRef]] = []
        self.val_targets: list[tuple[Case, ClassRef]] = []
        self.test_targets: list[tuple[Case, ClassRef]] = []

    def setup(self, stage: str | None = None) -> None:
        if self.index is not None:
            return
        self.index = build_index(self.roots, channel=self.channel)
        pairs = self.index.targets(classes=self.classes, datasets=self.datasets, split="train")
        test = [
            p
            for p in self.index.targets(classes=self.classes, datasets=self.datasets, split="test")
            if p[0].label is not None
        ]
        # A test-only dataset (labelled imagesTs/labelsTs, empty imagesTr) is enough for `sammoe test`.
        if not pairs and not (stage in ("test", "predict") and self.eval_split == "test" and test):
            raise DataError(
                f"{self.roots}: no training targets for classes={self.classes}; check roots/classes"
            )
        cases = sorted({(c.dataset, c.case_id) for c, _ in pairs})
        order = np.random.default_rng(self.seed).permutation(len(cases))
        n_val = int(round(self.val_fraction * len(cases))) if len(cases) > 1 else 0
        val_cases = {cases[j] for j in order[:n_val]}
        by_id = {(c.dataset, c.case_id): c for c, _ in pairs}
        pairs = pairs + self._click_targets([by_id[key] for key in cases], self.background_clicks)
        self.train_targets = [p for p in pairs if (p[0].dataset, p[0].case_id) not in val_cases]
        train_cases = [by_id[key] for key in cases if key not in val_cases]
        self.train_targets += self._click_targets(train_cases, self.border_clicks, BORDER_VALUE, BORDER)
        self.val_targets = [p for p in pairs if (p[0].dataset, p[0].case_id) in val_cases]
        if self.eval_split == "test" and test:
            by_test = {(c.dataset, c.case_id): c for c, _ in test}
            self.test_targets = test + self._click_targets(
                [by_test[k] for k in sorted(by_test)], self.background_clicks
            )
        else:
            self.test_targets = self.val_targets
        self._check_labels([c for c, _ in self.train_targets + self.val_targets + self.test_targets])

    def _check_labels(self, cases: Sequence[Case]) -> None:
        """Every label map this run trains, validates or tests on, checked before the first batch: a float map
        with non-integer values or a value dataset.json does not declare would otherwise surface only when a
        batch draws that case (or never, in a short run). Memoised by content hash in the cache."""
        seen: set = set()
        for case in cases:
            if case.label is None or case.label in seen:
                continue
            seen.add(case.label)
            allowed = declared_values(self.index, case.dataset)
            values = self.cache.label_values(case.label)
            if allowed is not None:
                check_declared(case.label, values, allowed, source=f"the labels of dataset {case.dataset}")

    def _click_targets(
        self, cases: Sequence[Case], count: int, value: int = BACKGROUND_VALUE, name: str = BACKGROUND
    ) -> list[tuple[Case, ClassRef]]:
        """``count`` routing targets per case that are no class of their own: clicks on unlabelled voxels
        (``background``, no Dice) or on a general class beside a task target (``border``)."""
        ref = {
            case.dataset: ClassRef.model_construct(dataset=case.dataset, value=value, name=name)
            for case in cases
        }
        return [(case, ref[case.dataset]) for case in cases for _ in range(count)]

    def _loader(
        self, dataset: Dataset, shuffle: bool, collate=None, batch_size: int | None = None
    ) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate,
        )

    def train_dataset(self) -> TargetDataset:
        settings = CropSettings(
            flips=self.flips,
            min_voxels=self.min_voxels,
            on_empty=self.on_empty,
            crop=self.crop,
            jitter=self.jitter,
            click_draws=self.click_draws,
            draw_seed=self.seed,
            border=self._border_voxels(),
        )
        return TargetDataset(
            self.train_targets, self.cache, self.preprocessor, index=self.index, settings=settings
        )

    def _border_voxels(self) -> tuple[list[str], list[str], float]:
        """``border`` of the training dataset: the radius in voxels of the preprocessing grid."""
        task, host, mm = self.border
        return task, host, mm / float(np.min(self.preprocessor.target_spacing))

    def val_dataset(self) -> TargetDataset:
        settings = CropSettings(
            flips=False, on_empty=self.on_empty, crop=self.crop, seed=self.first_click_seed
        )
        return TargetDataset(
            self.val_targets, self.cache, self.preprocessor, index=self.index, settings=settings
        )

    def eval_dataset(self) -> CaseDataset:
        return CaseDataset(
            self.test_targets,
            self.cache,
            self.preprocessor,
            self.index,
            first_click_seed=self.first_click_seed,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset(), shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_dataset(), shuffle=False, collate=collate_cases, batch_size=1)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
