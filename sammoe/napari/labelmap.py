"""The label map the viewer shows, composed by the session (no Qt, no torch): every target's model mask in
label order (a later target wins where masks overlap, as ``Segmentation.compose`` does), then the voxels the
user keeps (a locked target: its brush and eraser edits) on top, so no model call overwrites them.

Work stays inside boxes: a refinement recomposes only the box its target's old and new masks span.
``Kept`` holds a locked target's voxels as a mask inside its own bounding box (a 512 x 512 x 300 CT would
need 78 MB per target as a full mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Box = tuple[slice, ...]


def full_box(shape: Sequence[int]) -> Box:
    return tuple(slice(0, int(n)) for n in shape)


def union(a: Box | None, b: Box | None) -> Box | None:
    """The box spanning both; an empty box (or None for "nothing") adds nothing."""
    if a is None or is_empty(a):
        return b
    if b is None or is_empty(b):
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def intersect(a: Box, b: Box) -> Box | None:
    box = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return None if is_empty(box) else box


def is_empty(box: Box) -> bool:
    return any(s.stop <= s.start for s in box)


def box_of(indices: Sequence[np.ndarray]) -> Box | None:
    """The bounding box of voxel index arrays (None when there are none)."""
    if not len(indices) or np.asarray(indices[0]).size == 0:
        return None
    return tuple(slice(int(np.min(i)), int(np.max(i)) + 1) for i in indices)


def _relative(inner: Box, outer: Box) -> Box:
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))


@dataclass
class Kept:
    """The voxels of a locked target: ``mask`` inside ``box`` of the label map."""

    box: Box
    mask: np.ndarray

    @classmethod
    def of(cls, labels: np.ndarray, value: int) -> Kept:
        """What the label map shows of ``value`` now (the model's mask with the user's edits)."""
        box = box_of(np.nonzero(labels == value)) or full_box((0,) * labels.ndim)
        return cls(box, labels[box] == value)

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.mask))

    def update(self, indices: Sequence[np.ndarray], labels: np.ndarray, value: int) -> None:
        """The user changed these voxels: each is kept iff it now shows ``value``."""
        grown = union(self.box, box_of(indices))
        if grown is None:
            return
        if grown != self.box:
            mask = np.zeros(tuple(s.stop - s.start for s in grown), dtype=bool)
            if not is_empty(self.box):
                mask[_relative(self.box, grown)] = self.mask
            self.box, self.mask = grown, mask
        local = tuple(np.asarray(i) - s.start for i, s in zip(indices, self.box))
        self.mask[local] = labels[tuple(indices)] == value

    def paint(self, labels: np.ndarray, value: int, box: Box) -> None:
        inside = intersect(self.box, box)
        if inside is not None:
            labels[inside][self.mask[_relative(inside, self.box)]] = value


def compose(labels: np.ndarray, box: Box, layers: Sequence[tuple[int, Any, Kept | None]]) -> None:
    """Write the label map inside ``box``: (value, ``TargetResult``, kept voxels or None) per target in label
    order; a target with kept voxels shows those, not its model mask, and they win over every model mask."""
    labels[box] = 0
    for value, result, kept in layers:
        if kept is not None or result is None:
            continue
        inside = intersect(box, result.box or full_box(labels.shape))
        if inside is not None:
            labels[inside][result.mask[inside]] = value
    for value, _, kept in layers:
        if kept is not None:
            kept.paint(labels, value, box)


def count(labels: np.ndarray, value: int, box: Box | None) -> int:
    """Voxels showing ``value`` inside ``box`` (None: the whole map)."""
    return int(np.count_nonzero(labels[box or full_box(labels.shape)] == value))


class LabelMap:
    """The label map of one image, each target's voxel count in it, and the voxels the user keeps.

    Targets are given as (id, ``TargetResult`` or None) in label order: target i shows value i + 1.
    """

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
        self.voxels: dict[int, int] = {}
        self.kept: dict[int, Kept] = {}

    def _layers(self, targets: Sequence[tuple[int, Any]]) -> list[tuple[int, Any, Kept | None]]:
        return [(value, result, self.kept.get(id_)) for value, (id_, result) in enumerate(targets, start=1)]

    def compose(
        self, shape: Sequence[int], targets: Sequence[tuple[int, Any]], box: Box | None
    ) -> Box | None:
        """Draw the targets again inside ``box`` (None: everywhere, as when label values moved); returns the
        box that changed (None: anywhere)."""
        dtype = np.uint8 if len(targets) < 256 else np.uint16
        layers = self._layers(targets)
        if self.array is None or self.array.dtype != dtype or box is None:
            if self.array is None or self.array.dtype != dtype:
                self.array = np.zeros(tuple(shape), dtype=dtype)
            compose(self.array, full_box(self.array.shape), layers)
            counts = np.bincount(self.array.reshape(-1), minlength=len(targets) + 1)
            self.voxels = {id_: int(counts[v]) for v, (id_, _) in enumerate(targets, start=1)}
            return None
        compose(self.array, box, layers)
        for value, result, kept in layers:  # the targets the box overlaps: count their voxels again
            extent = kept.box if kept is not None else (None if result is None else result.box)
            if extent is None or intersect(extent, box) is not None:
                self.voxels[targets[value - 1][0]] = count(self.array, value, extent)
        return box

    def lock(self, id_: int, value: int) -> None:
        """Keep what the map shows of ``value`` now as that target's voxels."""
        if id_ not in self.kept and self.array is not None:
            self.kept[id_] = Kept.of(self.array, value)

    def edit(
        self, shape: Sequence[int], indices: Sequence[np.ndarray], values: Any, ids: dict[int, int]
    ) -> tuple[Box | None, set[int]]:
        """The user painted (or erased) these voxels; ``ids``: label value -> target id. Every target painted,
        or erased to 0, keeps its voxels from now on. Returns (box changed, ids of the targets that keep)."""
        indices = tuple(np.asarray(i, dtype=np.intp) for i in indices)
        box = box_of(indices)
        if box is None:
            return None, set()
        if self.array is None:
            self.array = np.zeros(tuple(shape), dtype=np.uint8)
        old = self.array[indices].copy()
        self.array[indices] = values
        new = self.array[indices]
        keeping = set()
        for value in set(np.unique(new).tolist()) | set(np.unique(old[new == 0]).tolist()):
            id_ = ids.get(int(value))
            if id_ is None:
                continue  # no target has this value: shown until a model call redraws there
            keeping.add(id_)
            if id_ in self.kept:
                self.kept[id_].update(indices, self.array, int(value))
            else:
                self.kept[id_] = Kept.of(self.array, int(value))
        changed = old != new
        gained, lost = new[changed], old[changed]
        for value, id_ in ids.items():
            delta = int(np.count_nonzero(gained == value)) - int(np.count_nonzero(lost == value))
            if delta and id_ in self.voxels:
                self.voxels[id_] += delta
        return box, keeping
