"""Routing features computed once: router and gate training read the frozen trunk's features of each crop
from here instead of re-encoding it every epoch.

A crop is known by its case, class, start, centring click and a checksum of its voxels, so a changed image,
preprocessing or flip is a new entry. The table is kept in memory and in one safetensors file per trunk and
feature layout (``tag``: backbone fingerprint, local radii, texture), written atomically when it grew. With
the data module's ``click_draws`` (a fixed set of clicks per target), every crop repeats and after the first
epochs no crop is encoded again; the general and background crops are shared by the routers of every expert
trained on the same data. Once every crop's features are cached, the training dataset sends their keys
instead of cutting the crops again (``serve_cached_crops``): the same batches, in the same order.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from sammoe.errors import CheckpointError
from sammoe.interact.crop_evaluation import first_clicks
from sammoe.model.gate import routing_features


def trunk_features(
    backbone: Any, batch: dict[str, Any], rows: list[int], layout: Sequence[Any]
) -> torch.Tensor:
    """(len(rows), F) routing features (``sammoe.model.gate.routing_features`` with ``layout``) of the
    samples ``rows`` of a click-centred batch, read at each crop's centring click; the trunk runs without
    gradients. What router and gate training compute on a cache miss."""
    points, labels = (t[rows] for t in first_clicks(batch))
    image = batch["image"][rows]
    with torch.no_grad():
        sparse, _ = backbone.prompt_encoder(points=(points, labels), boxes=None, masks=None)
        *_, trunk = layout  # routing_features' last argument
        # a router that reads only the image around the click (trunk false) needs no encoder pass
        embeddings = backbone.image_encoder(image) if trunk else None
        return routing_features(embeddings, sparse, points, labels, backbone.img_size, image, *layout).float()


def batch_features(
    cache: FeatureCache | None, backbone: Any, batch: dict[str, Any], layout: Sequence[Any]
) -> torch.Tensor:
    """(B, F) routing features of a click-centred batch: cached rows from ``cache`` and the trunk for the
    rest (every row when ``cache`` is None)."""

    def compute(rows: list[int]) -> torch.Tensor:
        return trunk_features(backbone, batch, rows, layout)

    if cache is None:
        return compute(list(range(len(batch["class_name"]))))
    return cache.features(batch, compute)


def crop_key(batch: dict[str, Any], b: int) -> str:
    """What identifies sample ``b`` of a train/val batch's crop (the dataset's ``feature_key`` when it sent
    one: a crop it did not cut again because its features are cached)."""
    known = batch.get("feature_key")
    if known is not None:
        return str(known[b])
    click = batch.get("first_click")
    return feature_key(
        batch["dataset"][b],
        batch["case_id"][b],
        batch["class_name"][b],
        batch["start"][b],
        None if click is None else click[b],
        batch["image"][b],
    )


def feature_key(
    dataset: str, case_id: str, class_name: str, start: Any, click: Any, image: torch.Tensor
) -> str:
    """A crop's key from its case, class, start, centring click and a checksum of its voxels."""
    image = image.detach()
    checksum = float(image.double().sum()), float(image.double().square().sum())
    click = None if click is None else [int(v) for v in torch.as_tensor(click).round().tolist()]
    start = [int(v) for v in torch.as_tensor(start).tolist()]
    return f"{dataset}|{case_id}|{class_name}|{start}|{click}|{checksum}"


def batch_device(batch: dict[str, Any]) -> torch.device:
    """Where a batch's tensors are (a batch of cached crops carries no image)."""
    for name in ("image", "first_click", "start"):
        value = batch.get(name)
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def serve_cached_crops(module: Any, cache: FeatureCache | None) -> None:
    """For this epoch, let the training dataset send its crops' keys instead of cutting them again when
    ``cache`` holds the features of every crop it can give (``TargetDataset.seen_keys``): with fixed click
    draws that happens after the first epochs, and an epoch then reads only features. A dataset in DataLoader
    workers, or one a distributed sampler splits, never sees every crop here and keeps cutting them."""
    loader = getattr(module.trainer, "train_dataloader", None)
    dataset = getattr(loader, "dataset", None)
    if cache is None or not hasattr(dataset, "seen_keys"):
        return
    keys = dataset.seen_keys()
    dataset.serve_keys = keys is not None and all(key in cache.table for key in keys)


class FeatureCache:
    """Feature vectors by crop key, in memory and (with ``folder``) on disk."""

    def __init__(self, folder: str | Path | None, tag: Sequence[Any]) -> None:
        digest = hashlib.sha256(repr(tuple(tag)).encode()).hexdigest()[:16]
        self.path = None if folder is None else Path(folder) / f"features-{digest}.safetensors"
        self.table: dict[str, torch.Tensor] = {}
        self.hits = self.misses = 0
        self._dirty = False
        if self.path is not None and self.path.is_file():
            from sammoe.loading import load_tensors

            try:
                self.table = load_tensors(self.path)
            except CheckpointError as err:  # a damaged cache is rebuilt, never trusted
                warnings.warn(f"{err}; rebuilding the feature cache", stacklevel=2)

    def features(self, batch: dict[str, Any], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """(B, F): cached rows, and ``compute(indices)`` for the samples not cached yet (then stored)."""
        keys = [crop_key(batch, b) for b in range(len(batch["class_name"]))]
        missing = [b for b, key in enumerate(keys) if key not in self.table]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            fresh = compute(missing).detach().float().cpu()
            for row, b in enumerate(missing):
                self.table[keys[b]] = fresh[row].clone()
            self._dirty = True
        return torch.stack([self.table[key] for key in keys]).to(batch_device(batch))

    def end_epoch(self, write: bool) -> float:
        """Share of this epoch's rows read from the cache; resets the counts and, with ``write`` (rank 0),
        writes the table when it grew."""
        share = self.hits / max(self.hits + self.misses, 1)
        self.hits = self.misses = 0
        if write:
            self.flush()
        return share

    def flush(self) -> Path | None:
        """Write the table when it grew (rank 0 only; safetensors via ``sammoe.loading``)."""
        if self.path is None or not self._dirty:
            return None
        from sammoe.loading import save_tensors

        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_tensors(self.table, self.path)
        self._dirty = False
        return self.path
