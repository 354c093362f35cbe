"""LightningDataModule and the datasets for training and evaluation.

Crops are placed by the ROI policy (``sammoe.interact.roi``): centred on a click on the target, as at
inference (``crop="click"``), or around the ground truth's box (``crop="bbox"``, the official protocol, for
comparisons only). Cases come from the preprocessing cache (``sammoe.data.cache``); crop, clamp,
z-normalisation and random flips run online on its memory-mapped arrays (only the crop is read).

Public API
----------
- ``TargetDataset(targets, cache, preprocessor, flips=True, min_voxels=1, on_empty="skip", index=None,
  crop="click", jitter=0, seed=None)``: one item per (case, class): dict(image (1,S,S,S) float32, label
  (1,S,S,S) float32, case_id, dataset, class_name, label_value, start (3,) long, first_click (3,) in
  ``click`` mode).
- ``CaseDataset(targets, cache, preprocessor)``: un-cropped case info for evaluation on the original grid:
  dict(case_id, dataset, class_name, label_value, image_path, label_path, volume (io.Volume), target (bool
  array on the original grid), first_click_input (where the click-centred crop goes), roi (the official box
  crop)). Use ``collate_cases`` (a list, no stacking).
- ``SegDataModule``: the LightningDataModule (plain-typed constructor for LightningCLI/YAML).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sammoe.data.cache import PreprocessCache
from sammoe.data.datasets import Case, CaseIndex, ClassRef, build_index
from sammoe.data.io import read_image, read_label
from sammoe.data.preprocess import Preprocessor
from sammoe.errors import ConfigError, DataError
from sammoe.interact.roi import border_click, check_crop_mode, seeded_first_click, training_roi

# Clicks on unlabelled voxels (background, air, tissue no class names): routing targets for the foundation.
BACKGROUND = "background"
BACKGROUND_VALUE = 0
# Clicks on a general class right beside a task target (``border_clicks``); the item takes that voxel's class.
BORDER = "border"
BORDER_VALUE = -1


def _allowed(index: CaseIndex | None, dataset: str) -> list[int] | None:
    if index is None:
        return None
    try:
        return list(index.dataset(dataset).labels.values())
    except KeyError:
        return None


class TargetDataset(Dataset):
    """Training/validation crops: one item per (case, class), placed by the ROI policy (``interact.roi``).

    ``crop="click"`` (default): centred on a click drawn uniformly over the class's voxels (plus up to
    ``jitter`` voxels of shift), the click the item's ``first_click`` carries, exactly what the Predictor does
    with a user's click. ``crop="bbox"``: the official crop around the class bounding box (no ``first_click``).
    ``seed`` None draws new clicks every time (training); an int makes item i's click fixed (validation).
    ``click_draws`` N > 0 (training): item i is one of N fixed draws, chosen at random each time, so the
    crops repeat and what is computed from them can be cached (router and gate features).
    A target named ``background`` (value 0) is a click on unlabelled voxels with an empty label (routing data).
    A target named ``border`` (value -1) is a click on a ``border`` host class within the given radius of a
    task class (``border``: (task class names, host class names, radius in voxels)); the item carries the
    clicked voxel's class.
    ``on_empty``: what to do when the class has fewer than ``min_voxels`` voxels after resampling:
    ``"skip"`` uses the next target instead (the official loader redraws), ``"error"`` raises ``DataError``.
    """

    def __init__(
        self,
        targets: Sequence[tuple[Case, ClassRef]],
        cache: PreprocessCache,
        preprocessor: Preprocessor,
        flips: bool = True,
        min_voxels: int = 1,
        on_empty: str = "skip",
        index: CaseIndex | None = None,
        crop: str = "click",
        jitter: int = 0,
        seed: int | None = None,
        click_draws: int = 0,
        draw_seed: int = 0,
        border: tuple[Sequence[str], Sequence[str], float] | None = None,
    ) -> None:
        if on_empty not in ("skip", "error"):
            raise ValueError("on_empty must be 'skip' or 'error'")
        self.targets = list(targets)
        self.cache, self.pre = cache, preprocessor
        self.flips, self.min_voxels, self.on_empty = flips, min_voxels, on_empty
        self.index = index
        self.crop, self.jitter, self.seed = check_crop_mode(crop), int(jitter), seed
        self.click_draws, self.draw_seed = int(click_draws), int(draw_seed)
        self.border = border
        self._keys: list[int] | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def _target_keys(self) -> list[int]:
        """A number per target from its case and class (the k-th background target of a case: k), not its
        index: runs over other class lists draw the same fixed clicks, and share cached features."""
        seen: dict[str, int] = {}
        keys = []
        for case, ref in self.targets:
            name = f"{case.dataset}/{case.case_id}/{ref.name}"
            seen[name] = seen.get(name, -1) + 1
            keys.append(zlib.crc32(f"{name}/{seen[name]}".encode()))
        return keys

    def _rng(self, i: int, used: int) -> np.random.Generator:
        """The generator of item ``i``, whose target is ``used`` (the next one when ``i``'s was empty)."""
        if self.seed is None and self.click_draws > 0:
            if self._keys is None:
                self._keys = self._target_keys()
            draw = int(torch.randint(0, self.click_draws, ()))
            return np.random.default_rng((self.draw_seed, self._keys[used], draw))
        if self.seed is None:  # torch's generator is seeded per worker and by seed_everything
            return np.random.default_rng(int(torch.randint(0, 2**62, ())))
        return np.random.default_rng((int(self.seed), i))

    def __getitem__(self, i: int) -> dict[str, Any]:
        for attempt in range(len(self.targets)):
            used = (i + attempt) % len(self.targets)
            case, ref = self.targets[used]
            cached = self.cache.load(case, _allowed(self.index, case.dataset))
            if ref.value in (BACKGROUND_VALUE, BORDER_VALUE):
                box = (None, None, 1)
                break
            box = cached.bboxes.get(ref.value)
            if box is not None and box[2] >= self.min_voxels:
                break
            if self.on_empty == "error":
                raise DataError(
                    f"{case.label}: no voxels of class {ref.name} (value {ref.value}) "
                    f"(at least {self.min_voxels} needed after resampling); drop the case or the class"
                )
        else:
            raise DataError(
                f"none of the {len(self.targets)} targets has enough voxels; check the class selection"
            )
        rng = self._rng(i, used)
        flips = [d for d in range(3) if rng.random() < 0.5] if self.flips else []
        first_click = None
        click, value, name = None, ref.value, ref.name
        if ref.value == BORDER_VALUE:
            click, value, name = self._border_click(case, cached, rng)
        if self.crop == "click" or value == BACKGROUND_VALUE or click is not None:
            bbox = None if box[0] is None else (box[0], box[1])
            roi, first_click = training_roi(
                self.pre, cached.resampled, value, bbox, rng, self.jitter, flips, click
            )
        else:
            roi = self.pre.crop(
                cached.resampled, label_value=ref.value, class_bbox=(box[0], box[1]), flip_axes=flips
            )
        image, label = roi.image, roi.label.float()
        if value == BACKGROUND_VALUE:
            label = torch.zeros_like(label)
        item = {
            "image": image.contiguous(),
            "label": label.contiguous(),
            "case_id": case.case_id,
            "dataset": case.dataset,
            "class_name": name,
            "label_value": value,
            "start": torch.as_tensor(roi.start),
        }
        if first_click is not None:
            item["first_click"] = torch.from_numpy(first_click)
        return item

    def _border_click(self, case: Case, cached: Any, rng: np.random.Generator) -> tuple[Any, int, str]:
        """(click on the resampled grid, value, class name) of a ``border`` target; an unlabelled voxel's
        click (None: ``training_roi`` draws it) when the case has no host class."""
        task_names, host_names, radius = self.border  # set whenever SegDataModule makes border targets
        labels = self.index.dataset(case.dataset).labels
        task = [labels[n] for n in task_names if n in labels]
        host = [labels[n] for n in host_names if n in labels]
        boxes = [(b[0], b[1]) for v in task if (b := cached.bboxes.get(v)) is not None]
        picked = border_click(cached.resampled.label, task, host, radius, rng, boxes) if host else None
        if picked is None:
            return None, BACKGROUND_VALUE, BACKGROUND
        names = {v: n for n, v in labels.items()}
        return picked[0], picked[1], names[picked[1]]


class CaseDataset(Dataset):
    """Evaluation/prediction items with the un-cropped case (metrics on the original grid).

    Each item carries ``first_click_input``, a voxel of the target drawn on the ORIGINAL grid with the
    evaluation seed (``interact.roi.seeded_first_click``), where the click-centred protocol's Predictor centres
    its crop, and ``roi``, the official crop around the ground truth's bounding box. A ``background`` target
    (value 0) is the unlabelled voxels, with ``roi`` None and a first click drawn with a seed of its own.
    """

    def __init__(
        self,
        targets: Sequence[tuple[Case, ClassRef]],
        cache: PreprocessCache,
        preprocessor: Preprocessor,
        index: CaseIndex | None = None,
        crop: bool = True,
        first_click_seed: int = 233,
    ) -> None:
        self.targets = list(targets)
        self.cache, self.pre, self.index, self.crop = cache, preprocessor, index, crop
        self.click_seed = int(first_click_seed)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        case, ref = self.targets[i]
        volume = read_image(case.image, channel=case.channel)
        target = None
        if case.label is not None:
            target = read_label(case.label, like=volume).array == ref.value
        roi = first_click_input = None
        if self.crop and target is not None:
            cached = self.cache.load(case, _allowed(self.index, case.dataset))
            box = None if ref.value == BACKGROUND_VALUE else cached.bboxes.get(ref.value)
            if box is not None:
                roi = self.pre.crop(cached.resampled, label_value=ref.value, class_bbox=(box[0], box[1]))
            # background targets of one case differ by their seed; the classes' first click is the official one
            seed = self.click_seed + (1000 * (i + 1) if ref.value == BACKGROUND_VALUE else 0)
            first_click_input = seeded_first_click(target, seed)
        return {
            "case_id": case.case_id,
            "dataset": case.dataset,
            "class_name": ref.name,
            "label_value": ref.value,
            "image_path": str(case.image),
            "label_path": str(case.label) if case.label else None,
            "volume": volume,
            "target": target,
            "roi": roi,
            "first_click_input": first_click_input,
        }


def collate_cases(items: list[dict]) -> list[dict]:
    """Collate for ``CaseDataset``: keep the items as a list (volumes differ in shape)."""
    return items


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
                f"data: crop_size {crop_size} must be a positive multiple of the 16-voxel patch (64 tiny, 128 vit_b_ori)"
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

    def _click_targets(
        self, cases: Sequence[Case], count: int, value: int = BACKGROUND_VALUE, name: str = BACKGROUND
    ) -> list[tuple[Case, ClassRef]]:
        """``count`` routing targets per case that are no class of their own: clicks on unlabelled voxels
        (``background``, no Dice) or on a general class beside a task target (``border``)."""
        ref = {case.dataset: ClassRef.model_construct(dataset=case.dataset, value=value, name=name)
               for case in cases}  # fmt: skip
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
        return TargetDataset(self.train_targets, self.cache, self.preprocessor, self.flips, self.min_voxels,
                             self.on_empty, self.index, self.crop, self.jitter, None, self.click_draws,
                             self.seed, self._border_voxels())  # fmt: skip

    def _border_voxels(self) -> tuple[list[str], list[str], float]:
        """``border`` of the training dataset: the radius in voxels of the preprocessing grid."""
        task, host, mm = self.border
        return task, host, mm / float(np.min(self.preprocessor.target_spacing))

    def val_dataset(self) -> TargetDataset:
        return TargetDataset(self.val_targets, self.cache, self.preprocessor, False, 1, self.on_empty,
                             self.index, self.crop, 0, seed=self.first_click_seed)  # fmt: skip

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
