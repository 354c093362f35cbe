"""The map-style datasets behind ``SegDataModule``: click-centred training/validation crops and whole cases
for evaluation on the original grid.

- ``TargetDataset(targets, cache, preprocessor, index=None, settings=CropSettings())``: one item per (case,
  class): dict(image (1,S,S,S) float32, label (1,S,S,S) float32, case_id, dataset, class_name, label_value,
  start (3,) long, first_click (3,) in ``click`` mode).
- ``CaseDataset(targets, cache, preprocessor)``: un-cropped case info for evaluation on the original grid:
  dict(case_id, dataset, class_name, label_value, image_path, label_path, volume (io.Volume), target (bool
  array on the original grid), first_click_input (where the click-centred crop goes), roi (the official box
  crop)). Use ``collate_cases`` (a list, no stacking).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from sammoe.data.cache import PreprocessCache
from sammoe.data.datasets import Case, CaseIndex, ClassRef
from sammoe.data.io import read_image, read_label
from sammoe.data.preprocess import Preprocessor
from sammoe.errors import DataError
from sammoe.eval.calibration import BACKGROUND
from sammoe.interact.roi import border_click, check_crop_mode, seeded_first_click, training_roi
from sammoe.lit.feature_cache import feature_key

# Clicks on unlabelled voxels (background, air, tissue no class names): routing targets for the foundation.
BACKGROUND_VALUE = 0
# Clicks on a general class right beside a task target (``border_clicks``); the item takes that voxel's class.
BORDER = "border"
BORDER_VALUE = -1


def declared_values(index: CaseIndex | None, dataset: str) -> list[int] | None:
    if index is None:
        return None
    try:
        return index.dataset(dataset).declared
    except KeyError:
        return None


@dataclass(frozen=True)
class CropSettings:
    """How a ``TargetDataset`` places and draws its crops (see there)."""

    flips: bool = True
    min_voxels: int = 1
    on_empty: str = "skip"
    crop: str = "click"
    jitter: int = 0
    seed: int | None = None
    click_draws: int = 0
    draw_seed: int = 0
    border: tuple[Sequence[str], Sequence[str], float] | None = None


class TargetDataset(Dataset):
    """Training/validation crops: one item per (case, class), placed by the ROI policy (``interact.roi``).

    ``crop="click"`` (default): centred on a click drawn uniformly over the class's voxels (plus up to
    ``jitter`` voxels of shift), the click the item's ``first_click`` carries, exactly what the Predictor does
    with a user's click. ``crop="bbox"``: the official crop around the class bounding box (no
    ``first_click``).
    ``seed`` None draws new clicks every time (training); an int makes item i's click fixed (validation).
    ``click_draws`` N > 0 (training): item i is one of N fixed draws, chosen at random each time, so the
    crops repeat and what is computed from them can be cached (router and gate features). Once every such
    crop has been cut and its features cached, router and gate training set ``serve_keys`` for the epoch
    (``feature_cache.serve_cached_crops``): items then come as their fields and ``feature_key`` alone,
    without image and label, drawn exactly as before.
    A target named ``background`` (value 0) is a click on unlabelled voxels with an empty label
    (routing data).
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
        *,
        index: CaseIndex | None = None,
        settings: CropSettings = CropSettings(),  # noqa: B008 (frozen, shared safely)
    ) -> None:
        if settings.on_empty not in ("skip", "error"):
            raise ValueError("on_empty must be 'skip' or 'error'")
        self.targets = list(targets)
        self.cache, self.pre, self.index = cache, preprocessor, index
        self.settings = replace(settings, crop=check_crop_mode(settings.crop))
        self._keys: list[int] | None = None
        self._used: dict[int, int] = {}  # item -> the target it used (the next one when its own is empty)
        self._seen: dict[tuple[int, int], dict[str, Any]] = {}  # (target, draw) -> the item without its crop
        self.serve_keys = False  # set by router/gate training for an epoch whose every crop is cached

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

    def _rng(self, i: int, used: int) -> tuple[np.random.Generator, int | None]:
        """The generator of item ``i``, whose target is ``used`` (the next one when ``i``'s was empty), and
        which of the ``click_draws`` fixed draws it is (None: not drawing from fixed clicks)."""
        if self.settings.seed is None and self.settings.click_draws > 0:
            if self._keys is None:
                self._keys = self._target_keys()
            draw = int(torch.randint(0, self.settings.click_draws, ()))
            return np.random.default_rng((self.settings.draw_seed, self._keys[used], draw)), draw
        if self.settings.seed is None:  # torch's generator is seeded per worker and by seed_everything
            return np.random.default_rng(int(torch.randint(0, 2**62, ()))), None
        return np.random.default_rng((int(self.settings.seed), i)), None

    def seen_keys(self) -> list[str] | None:
        """The feature keys of every crop this dataset can give, once each has been cut here (every item
        visited, every fixed draw of its target seen); None before that, or without fixed click draws."""
        draws = self.settings.click_draws if self.settings.seed is None else 0
        if draws == 0 or len(self._used) < len(self.targets) or self.cache.root is None:
            # without an on-disk cache, reading a case resamples it with torchio, which draws from torch's
            # generator: skipping the read would change every later draw
            return None
        identities = [(u, d) for u in sorted(set(self._used.values())) for d in range(draws)]
        if any(identity not in self._seen for identity in identities):
            return None
        return [self._seen[identity]["feature_key"] for identity in identities]

    def _target_of(self, i: int) -> tuple[int, Any, Any]:
        """(target used for item ``i``, its cached case, its class box): ``i``'s own target, or the next one
        with enough voxels."""
        for attempt in range(len(self.targets)):
            used = (i + attempt) % len(self.targets)
            case, ref = self.targets[used]
            cached = self.cache.load(case, declared_values(self.index, case.dataset))
            if ref.value in (BACKGROUND_VALUE, BORDER_VALUE):
                return used, cached, (None, None, 1)
            box = cached.bboxes.get(ref.value)
            if box is not None and box[2] >= self.settings.min_voxels:
                return used, cached, box
            if self.settings.on_empty == "error":
                raise DataError(
                    f"{case.label}: no voxels of class {ref.name} (value {ref.value}) "
                    f"(at least {self.settings.min_voxels} needed after resampling); drop the case or "
                    "the class"
                )
        raise DataError(
            f"none of the {len(self.targets)} targets has enough voxels; check the class selection"
        )

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.serve_keys:  # every crop cut once and its features cached: the same draw, sent as its key
            used = self._used[i]
            _, draw = self._rng(i, used)
            known = self._seen[(used, draw)]
            return {
                k: torch.tensor(v[0], dtype=v[1]) if isinstance(v, tuple) else v for k, v in known.items()
            }
        used, cached, box = self._target_of(i)
        self._used[i] = used
        rng, draw = self._rng(i, used)
        case, ref = self.targets[used]
        flips = [d for d in range(3) if rng.random() < 0.5] if self.settings.flips else []
        first_click = None
        click, value, name = None, ref.value, ref.name
        if ref.value == BORDER_VALUE:
            click, value, name = self._border_click(case, cached, rng)
        if self.settings.crop == "click" or value == BACKGROUND_VALUE or click is not None:
            bbox = None if box[0] is None else (box[0], box[1])
            roi, first_click = training_roi(
                self.pre, cached.resampled, value, bbox, rng, self.settings.jitter, flips, click
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
            if draw is not None:  # a fixed draw: the same crop comes back, and may then be sent as its key
                key = feature_key(case.dataset, case.case_id, name, item["start"], item["first_click"], image)
                # tensors kept as Python tuples: thousands of tiny tensors held between freed 1 MB crops kept
                # the heap from shrinking (gigabytes of resident memory in a gate fit)
                self._seen[(used, draw)] = {
                    **{
                        k: (tuple(v.tolist()), v.dtype) if isinstance(v, torch.Tensor) else v
                        for k, v in item.items()
                        if k not in ("image", "label")
                    },
                    "feature_key": key,
                }
        return item

    def _border_click(self, case: Case, cached: Any, rng: np.random.Generator) -> tuple[Any, int, str]:
        """(click on the resampled grid, value, class name) of a ``border`` target; an unlabelled voxel's
        click (None: ``training_roi`` draws it) when the case has no host class."""
        task_names, host_names, radius = (
            self.settings.border
        )  # set whenever SegDataModule makes border targets
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
    evaluation seed (``interact.roi.seeded_first_click``), where the click-centred protocol's Predictor
    centres its crop, and ``roi``, the official crop around the ground truth's bounding box. A
    ``background`` target (value 0) is the unlabelled voxels, with ``roi`` None and a first click drawn with
    a seed of its own.
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
            cached = self.cache.load(case, declared_values(self.index, case.dataset))
            box = None if ref.value == BACKGROUND_VALUE else cached.bboxes.get(ref.value)
            if box is not None:
                roi = self.pre.crop(cached.resampled, label_value=ref.value, class_bbox=(box[0], box[1]))
            # background targets of one case differ by their seed; the classes' first click is the official
            # one
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
