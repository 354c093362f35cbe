"""LightningDataModule, preprocessing cache and datasets for training and evaluation.

Training never waits on resampling: ``PreprocessCache`` stores each case once on the preprocessing grid
(target spacing, RAS+) as ``.npy`` (image float32, label uint8/uint16) beside a ``meta.json`` (affines, shapes,
per-class bounding boxes). The entry's key is a hash of the source files' contents and of the preprocessing
parameters, so a changed file or spacing gets a new entry. File hashes are memoised by (size, mtime), so a
warm epoch only stats the sources and memory-maps the arrays. Crop, clamp, z-normalisation and random flips
run online on the memory-mapped arrays (only the crop is read).

Public API
----------
- ``PreprocessCache(cache_dir, preprocessor)``: ``load(case, allowed_values=None) -> CachedCase``;
  ``key(case)``; ``entries()`` (the manifest: one ``meta.json`` per entry). ``cache_dir=None``: no caching.
- ``CachedCase``: ``resampled`` (``preprocess.Resampled``, arrays possibly memory-mapped), ``bboxes``
  {value: (min, max_exclusive, voxel_count)}.
- ``TargetDataset(targets, cache, preprocessor, flips=True, min_voxels=1, on_empty="skip", allowed=...)``:
  one item per (case, class): dict(image (1,S,S,S) float32, label (1,S,S,S) float32, case_id, dataset,
  class_name, label_value, start (3,) long). Crop centred like the official code (class bounding box).
- ``CaseDataset(targets, cache, preprocessor)``: un-cropped case info for evaluation on the original grid:
  dict(case_id, dataset, class_name, label_value, image_path, label_path, volume (io.Volume),
  target (bool array on the original grid), roi (preprocess.Roi cropped around the target, official)).
  Use ``collate_cases`` (a list, no stacking).
- ``SegDataModule``: the LightningDataModule (plain-typed constructor for LightningCLI/YAML).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sammoe.data.datasets import Case, CaseIndex, ClassRef, build_index
from sammoe.data.io import check_label_values, read_image, read_label
from sammoe.data.preprocess import Preprocessor, Resampled
from sammoe.errors import ConfigError, DataError
from sammoe.files import write_text
from sammoe.interact.roi import check_crop_mode, click_centred_roi, seeded_first_click, training_roi

CACHE_VERSION = 1
# Clicks on unlabelled voxels (background, air, tissue no class names): routing targets for the foundation.
BACKGROUND = "background"
BACKGROUND_VALUE = 0


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class CachedCase:
    resampled: Resampled
    bboxes: dict[int, tuple[np.ndarray, np.ndarray, int]]


class PreprocessCache:
    """Disk cache of resampled RAS volumes, keyed by source-file hashes + preprocessing parameters."""

    def __init__(self, cache_dir: str | Path | None, preprocessor: Preprocessor) -> None:
        self.root = Path(cache_dir) if cache_dir is not None else None
        self.pre = preprocessor

    # ------------------------------------------------------------------------------------------ hashing
    def file_hash(self, path: Path) -> str:
        """Content hash, memoised on (size, mtime_ns) in ``<cache>/hashes``."""
        path = Path(path)
        if self.root is None:
            return _sha256_file(path)
        stat = path.stat()
        stamp = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        memo = self.root / "hashes" / (hashlib.sha1(stamp["path"].encode()).hexdigest() + ".json")
        try:
            known = json.loads(memo.read_text())
            if all(known.get(k) == v for k, v in stamp.items()):
                return known["sha256"]
        except (OSError, ValueError):
            pass
        digest = _sha256_file(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        write_text(memo, json.dumps({**stamp, "sha256": digest}))
        return digest

    def key(self, case: Case) -> tuple[str, dict]:
        source = {
            "image": self.file_hash(case.image),
            "label": self.file_hash(case.label) if case.label is not None else None,
            "channel": case.channel,
        }
        params = {"version": CACHE_VERSION, **self.pre.params()}
        blob = json.dumps({"source": source, "params": params}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32], {"source": source, "params": params}

    # --------------------------------------------------------------------------------------------- load
    def _compute(self, case: Case, allowed_values: Sequence[int] | None) -> tuple[Resampled, dict]:
        image = read_image(case.image, channel=case.channel)
        label = None
        if case.label is not None:
            label = read_label(case.label, like=image)
            if allowed_values is not None:
                check_label_values(label, allowed_values, source=f"the labels of dataset {case.dataset}")
        res = self.pre.resample(image, label)
        boxes = {}
        if res.label is not None:
            from scipy import ndimage

            # one pass for every class's bounding box, one for the voxel counts
            counts = np.bincount(res.label.reshape(-1))
            for value, slices in enumerate(ndimage.find_objects(res.label), start=1):
                if slices is not None:
                    lo = np.array([s.start for s in slices], dtype=np.int64)
                    hi = np.array([s.stop for s in slices], dtype=np.int64)
                    boxes[value] = (lo, hi, int(counts[value]))
        return res, boxes

    def load(self, case: Case, allowed_values: Sequence[int] | None = None) -> CachedCase:
        if self.root is None:
            res, boxes = self._compute(case, allowed_values)
            return CachedCase(res, boxes)
        key, info = self.key(case)
        entry = self.root / "entries" / key
        meta_path = entry / "meta.json"
        if not meta_path.exists():
            res, boxes = self._compute(case, allowed_values)
            tmp = self.root / "entries" / f".{key}.{uuid.uuid4().hex[:8]}.tmp"
            tmp.mkdir(parents=True)
            np.save(tmp / "image.npy", res.image)
            if res.label is not None:
                np.save(tmp / "label.npy", res.label)
            meta = {
                **info,
                "case": {"dataset": case.dataset, "case_id": case.case_id, "image": str(case.image),
                         "label": str(case.label) if case.label else None},
                "affine": res.affine.tolist(),
                "orig_affine": res.orig_affine.tolist(),
                "orig_shape": list(res.orig_shape),
                "bboxes": {str(v): [lo.tolist(), hi.tolist(), n] for v, (lo, hi, n) in boxes.items()},
            }  # fmt: skip
            (tmp / "meta.json").write_text(json.dumps(meta))
            try:
                os.replace(tmp, entry)
            except OSError:  # another worker finished the same entry first
                shutil.rmtree(tmp, ignore_errors=True)
            return CachedCase(res, boxes)
        meta = json.loads(meta_path.read_text())
        label_path = entry / "label.npy"
        res = Resampled(
            image=np.load(entry / "image.npy", mmap_mode="r"),
            affine=np.asarray(meta["affine"]),
            orig_affine=np.asarray(meta["orig_affine"]),
            orig_shape=tuple(meta["orig_shape"]),
            label=np.load(label_path, mmap_mode="r") if label_path.exists() else None,
            path=case.image,
        )
        boxes = {
            int(v): (np.asarray(lo), np.asarray(hi), int(n)) for v, (lo, hi, n) in meta["bboxes"].items()
        }
        return CachedCase(res, boxes)

    def entries(self) -> list[dict]:
        """The manifest: every cache entry's ``meta.json`` (plus its key)."""
        if self.root is None or not (self.root / "entries").exists():
            return []
        out = []
        for meta in sorted((self.root / "entries").glob("*/meta.json")):
            out.append({"key": meta.parent.name, **json.loads(meta.read_text())})
        return out


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
    A target named ``background`` (value 0) is a click on unlabelled voxels with an empty label (routing data).
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
    ) -> None:
        if on_empty not in ("skip", "error"):
            raise ValueError("on_empty must be 'skip' or 'error'")
        self.targets = list(targets)
        self.cache, self.pre = cache, preprocessor
        self.flips, self.min_voxels, self.on_empty = flips, min_voxels, on_empty
        self.index = index
        self.crop, self.jitter, self.seed = check_crop_mode(crop), int(jitter), seed

    def __len__(self) -> int:
        return len(self.targets)

    def _rng(self, i: int) -> np.random.Generator:
        if self.seed is None:  # torch's generator is seeded per worker and by seed_everything
            return np.random.default_rng(int(torch.randint(0, 2**62, ())))
        return np.random.default_rng((int(self.seed), i))

    def __getitem__(self, i: int) -> dict[str, Any]:
        for attempt in range(len(self.targets)):
            case, ref = self.targets[(i + attempt) % len(self.targets)]
            cached = self.cache.load(case, _allowed(self.index, case.dataset))
            if ref.value == BACKGROUND_VALUE:
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
        rng = self._rng(i)
        flips = [d for d in range(3) if rng.random() < 0.5] if self.flips else []
        first_click = None
        if self.crop == "click" or ref.value == BACKGROUND_VALUE:
            bbox = None if box[0] is None else (box[0], box[1])
            roi, first_click = training_roi(
                self.pre, cached.resampled, ref.value, bbox, rng, self.jitter, flips
            )
        else:
            roi = self.pre.crop(
                cached.resampled, label_value=ref.value, class_bbox=(box[0], box[1]), flip_axes=flips
            )
        image, label = roi.image, roi.label.float()
        if ref.value == BACKGROUND_VALUE:
            label = torch.zeros_like(label)
        item = {
            "image": image.contiguous(),
            "label": label.contiguous(),
            "case_id": case.case_id,
            "dataset": case.dataset,
            "class_name": ref.name,
            "label_value": ref.value,
            "start": torch.as_tensor(roi.start),
        }
        if first_click is not None:
            item["first_click"] = torch.from_numpy(first_click)
        return item


class CaseDataset(Dataset):
    """Evaluation/prediction items with the un-cropped case (metrics on the original grid).

    Each item carries both protocols' crops: ``click_roi`` centred on ``first_click_input``, a voxel of the
    target drawn on the ORIGINAL grid with the evaluation seed (``interact.roi.seeded_first_click``), and
    ``roi``, the official crop around the ground truth's bounding box. A ``background`` target (value 0) is
    the unlabelled voxels, with ``roi`` None and a first click drawn with a seed of its own.
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
        roi = click_roi = first_click_input = first_click = None
        if self.crop and target is not None:
            cached = self.cache.load(case, _allowed(self.index, case.dataset))
            box = None if ref.value == BACKGROUND_VALUE else cached.bboxes.get(ref.value)
            if box is not None:
                roi = self.pre.crop(cached.resampled, label_value=ref.value, class_bbox=(box[0], box[1]))
            # background targets of one case differ by their seed; the classes' first click is the official one
            seed = self.click_seed + (1000 * (i + 1) if ref.value == BACKGROUND_VALUE else 0)
            first_click_input = seeded_first_click(target, seed)
            if first_click_input is not None:
                click_roi, first_click = click_centred_roi(
                    self.pre, cached.resampled, first_click_input, label_value=ref.value
                )
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
            "click_roi": click_roi,
            "first_click": first_click,
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
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0 or jitter < 0 or background_clicks < 0:
            raise ConfigError(
                "data: batch_size must be >= 1 and num_workers, jitter, background_clicks >= 0; "
                f"got {batch_size}, {num_workers}, {jitter}, {background_clicks}"
            )
        self.crop, self.jitter = check_crop_mode(crop), int(jitter)
        self.background_clicks, self.first_click_seed = int(background_clicks), int(first_click_seed)
        self.save_hyperparameters()
        self.roots = [roots] if isinstance(roots, str) else list(roots)
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
        pairs = pairs + self._background_targets([by_id[key] for key in cases])
        self.train_targets = [p for p in pairs if (p[0].dataset, p[0].case_id) not in val_cases]
        self.val_targets = [p for p in pairs if (p[0].dataset, p[0].case_id) in val_cases]
        if self.eval_split == "test" and test:
            by_test = {(c.dataset, c.case_id): c for c, _ in test}
            self.test_targets = test + self._background_targets([by_test[k] for k in sorted(by_test)])
        else:
            self.test_targets = self.val_targets

    def _background_targets(self, cases: Sequence[Case]) -> list[tuple[Case, ClassRef]]:
        """``background_clicks`` targets per case that click unlabelled voxels (routing data, no Dice)."""
        ref = {case.dataset: ClassRef.model_construct(dataset=case.dataset, value=BACKGROUND_VALUE, name=BACKGROUND)
               for case in cases}  # fmt: skip
        return [(case, ref[case.dataset]) for case in cases for _ in range(self.background_clicks)]

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
                             self.on_empty, self.index, self.crop, self.jitter)  # fmt: skip

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
