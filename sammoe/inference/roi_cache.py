"""The encoded crops of one image and the interaction state of each target on them.

Encoding a 128^3 crop is the expensive step of a prediction; everything after it (the decoder, once per
click) reuses the crop's embedding. ``RoiCache`` keeps the last ``size`` encoded crops by their start on the
resampled grid, so targets whose crops coincide share one encode, and a refinement click finds its target's
embedding without encoding again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sammoe.data.clicks_file import round_voxel
from sammoe.data.lazy_resample import LazyResampled
from sammoe.data.preprocess import Preprocessor, Resampled, Roi
from sammoe.inference.targets import TargetResult
from sammoe.interact.roi import click_centred_start


@dataclass
class EncodedRoi:
    """One encoded crop."""

    index: int  # in encoding order: what a result's ``roi`` refers to
    roi: Roi
    embedding: torch.Tensor  # (1, C, g, g, g) on the model's device
    image: torch.Tensor | None = None  # (1, 1, S, S, S) the encoded crop, kept for a gate that reads it

    @property
    def centre(self) -> np.ndarray:
        return np.asarray(self.roi.start) + np.asarray(self.roi.size) // 2


@dataclass
class TargetState:
    """A target under interaction: its clicks, what the decoder has consumed, and the last outputs."""

    name: str
    value: int
    clicks: np.ndarray  # (N, 3) float input voxels
    labels: np.ndarray  # (N,)
    entry: EncodedRoi
    fed: int = 0  # clicks already consumed by the decoder
    low: torch.Tensor | None = None  # (1, 1, L, L, L) previous low-res logits
    iou: float = 0.0
    probs: np.ndarray | None = None  # gate probabilities of the last step
    route: int = 0
    chosen: int | None = None  # the decoder the target's own ``route`` names (None: routed as usual)
    # (S, S, S) foreground probability in the primary ROI, only while the result is made from it: kept per
    # target it would cost S^3 floats each (a thousand targets: gigabytes)
    roi_prob: np.ndarray | None = None
    windows: int = 1
    result: TargetResult | None = None
    # the state before each refinement click, newest last: undo restores it without decoding
    history: list[TargetState] = field(default_factory=list, repr=False)

    def snapshot(self) -> TargetState:
        """This state without its history (the arrays are replaced, never changed in place, so sharing them
        is safe)."""
        return replace(self, history=[])

    def restore(self, earlier: TargetState) -> None:
        """Take back the interaction since ``earlier`` (a snapshot); the target keeps its name and value."""
        for name in earlier.__dataclass_fields__:
            if name not in ("history", "name", "value"):
                setattr(self, name, getattr(earlier, name))
        if self.result is not None:
            self.result.value = self.value


class RoiCache:
    """Encoded crops of the current image, least recently used dropped beyond ``size``.

    ``encode(x)`` runs the image encoder on a (B, 1, S, S, S) batch of crops; ``keep_image`` keeps the crop
    itself for a model whose routing reads the image around the click. ``batch`` > 1 encodes the new crops of
    one call together (a GPU runs 8 crops in little more time than one; a CPU gains nothing).
    """

    def __init__(
        self,
        pre: Preprocessor,
        encode: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        *,
        size: int = 16,
        share_roi: float = 0.0,
        keep_image: bool = False,
        batch: int = 1,
    ) -> None:
        self.pre, self._encode, self.device = pre, encode, device
        self.size, self.share_roi, self.keep_image = int(size), float(share_roi), keep_image
        self.batch = max(1, int(batch))
        self.grid: Resampled | LazyResampled | None = None
        self._entries: OrderedDict[tuple[int, int, int], EncodedRoi] = OrderedDict()
        self.encodes = 0

    def reset(self, grid: Resampled | LazyResampled | None) -> None:
        """A new image: forget every crop and count encodes from zero."""
        self.grid = grid
        self._entries.clear()
        self.encodes = 0

    def get(self, start: Sequence[int]) -> EncodedRoi:
        """The crop starting at ``start`` on the resampled grid, encoded on first use."""
        key = tuple(int(v) for v in start)
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        return self._encode_new([key])[0]

    def _encode_new(self, keys: list[tuple[int, int, int]]) -> list[EncodedRoi]:
        """Crop and encode ``keys`` (none cached) as one batch, and cache them."""
        rois = [self.pre.crop(self.grid, start=np.asarray(key)) for key in keys]
        x = torch.stack([roi.image for roi in rois]).to(self.device)
        emb = self._encode(x)
        entries = []
        for i, (key, roi) in enumerate(zip(keys, rois)):
            roi.image = torch.empty(0)  # geometry only from here on
            entry = EncodedRoi(self.encodes, roi, emb[i : i + 1], x[i : i + 1] if self.keep_image else None)
            self.encodes += 1
            self._entries[key] = entry
            entries.append(entry)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return entries

    def prefetch(self, starts: Sequence[tuple[int, int, int]]) -> None:
        """Encode the crops at ``starts`` that are not cached, ``batch`` at a time (no more than the cache
        holds, so that none is dropped before it is used)."""
        if self.batch < 2 or self.share_roi > 0:  # shared ROIs are found one target at a time
            return
        missing = list(
            dict.fromkeys(tuple(int(v) for v in s) for s in starts if tuple(s) not in self._entries)
        )
        for i in range(0, min(len(missing), self.size), self.batch):
            self._encode_new(missing[i : min(i + self.batch, self.size)])

    def centred_on(self, vox: np.ndarray) -> EncodedRoi:
        """The crop for a target whose first click is input voxel ``vox``: a cached crop whose centre lies
        within ``share_roi`` x crop side of it, else a new crop centred on it."""
        centre = round_voxel(self.grid.input_to_ras(vox))
        limit = self.share_roi * self.pre.crop_size[0]
        if limit > 0:
            for entry in reversed(self._entries.values()):
                if np.all(np.abs(entry.centre - centre) <= limit):
                    return self.get(entry.roi.start)
        return self.get(click_centred_start(self.pre, self.grid, vox))

    def new_states(self, checked: list[tuple], offset: int) -> list[TargetState]:
        """Checked targets (name, input voxels, labels) as states on their click-centred crops, numbered
        from ``offset`` + 1, in the caller's order. The crops are looked up grouped by where they start, so
        targets sharing a crop find it encoded whatever the cache's size and the targets' order."""
        firsts = [int(np.flatnonzero(labels == 1)[0]) for _, _, labels in checked]
        starts = [
            tuple(int(v) for v in click_centred_start(self.pre, self.grid, vox[k]))
            for (_, vox, _), k in zip(checked, firsts)
        ]
        seen: dict[tuple[int, ...], int] = {}
        order = sorted(range(len(checked)), key=lambda i: seen.setdefault(starts[i], len(seen)))
        self.prefetch(list(seen))
        states: list[TargetState | None] = [None] * len(checked)
        for i in order:
            name, vox, labels = checked[i]
            entry = self.centred_on(vox[firsts[i]])
            if not np.all(entry.roi.contains(entry.roi.input_to_roi(vox))):
                entry = self.get(starts[i])
            # The centring click goes first, so the first step sees a positive click (official protocol).
            first_click = np.argsort(np.arange(len(vox)) != firsts[i], kind="stable")
            states[i] = TargetState(name, offset + i + 1, vox[first_click], labels[first_click], entry)
        return states  # type: ignore[return-value]
