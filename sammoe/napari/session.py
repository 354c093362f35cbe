"""Interactive segmentation state for a viewer, without Qt or napari (unit-testable on its own).

Every target's clicks are the source of truth; the ``Predictor`` only caches what they produce. A refinement
click on a target that already has a mask goes through ``Predictor.add_click`` (the cached embedding and the
target's previous low-res logits). Each operation costs what it changes: a new target's first positive click
decodes that target alone (``Predictor.add_target``), undo restores the target's state before its last
refinement without a model call (``Predictor.undo_click``), reset and delete drop one target
(``Predictor.remove_target``); another model, or a change the Predictor cannot follow, re-runs
``Predictor.predict`` on every target. Either way the label map equals what ``sammoe segment`` writes for the
same clicks file (``clicks_document``): each target's mask depends only on its own clicks.

Label values: the targets that have a positive click, in the order they were added, get 1, 2, ... (the order
of the clicks file); a target without a positive click is pending and has no mask.

- ``Session(predictor=None)``; ``set_volume(volume)``, ``set_predictor(predictor)``, ``prepare()``.
- ``add_target(name=None)``, ``rename(id, name)``, ``click(id, point, positive)``, ``undo(id)``,
  ``reset(id)``, ``delete(id)``: each returns an ``Update`` (a snapshot the UI may read from another thread).
- ``clicks_document()``: the ``sammoe segment --clicks`` JSON (voxel space) plus each target's result.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sammoe.data.io import Volume
from sammoe.errors import ConfigError, DataError
from sammoe.inference.targets import Target, TargetResult, check_target


@dataclass(frozen=True)
class Click:
    point: tuple[float, float, float]  # input voxel indices as clicked (floats; the Predictor rounds)
    positive: bool


@dataclass
class _Target:
    id: int
    name: str
    clicks: list[Click] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return any(c.positive for c in self.clicks)


@dataclass(frozen=True)
class TargetView:
    """One target as the UI shows it. ``value`` 0: pending (no positive click yet, no mask)."""

    id: int
    name: str
    clicks: tuple[Click, ...]
    value: int = 0
    expert: str | None = None
    routed_by: str | None = None
    confidence: float | None = None  # the gate's / router's probability of the expert that segmented it
    predicted_iou: float | None = None  # the model's own estimate, not a measurement
    volume_ml: float | None = None
    voxels: int | None = None


@dataclass(frozen=True)
class Update:
    """What one operation left: the label map (None when it did not change), every target, how it ran."""

    labels: np.ndarray | None
    targets: tuple[TargetView, ...]
    # "refine" (add_click), "add" (a new target decoded alone), "undo" (a refinement taken back, no model
    # call), "remove" (one target's mask dropped), "predict" (every target decoded again), "none"
    path: str
    seconds: float = 0.0
    encodes: int = 0
    box: tuple[slice, slice, slice] | None = None  # where ``labels`` changed (None: anywhere)


class Session:
    """The clicks of every target on one image, and the Predictor that turns them into a label map."""

    def __init__(self, predictor: Any = None) -> None:
        self.predictor = predictor
        self.volume: Volume | None = None
        self._targets: list[_Target] = []
        self._ids = itertools.count(1)
        self._image_set = False  # the predictor holds this volume (resampled)
        self._synced = False  # the predictor's targets are exactly the active targets, in order
        self._results: dict[int, TargetResult] = {}
        self._labels: np.ndarray | None = None
        self._changed: tuple[slice, slice, slice] | None = None

    # ------------------------------------------------------------------------------------------ setup
    def set_volume(self, volume: Volume) -> Update:
        """A new image: every target is dropped; the image is resampled on the next model call."""
        self.volume = volume
        self._targets = []
        self._image_set = self._synced = False
        self._results = {}
        self._labels = None
        return self._update("none")

    def set_predictor(self, predictor: Any) -> Update:
        """Another model: every target is segmented again with it."""
        self.predictor = predictor
        self._image_set = self._synced = False
        if self.volume is None or not self._active():
            return self._update("none")
        return self._timed(self._predict)

    @property
    def needs_image(self) -> bool:
        """The next model call resamples the image first (the slow part of an image's first click)."""
        return not self._image_set

    def snapshot(self) -> Update:
        """The targets as they are, without a model call."""
        return self._update("none")

    def prepare(self) -> bool:
        """Resample the image for the model (the slow part of a first click); True when it had to."""
        if self.predictor is None:
            raise ConfigError("no model loaded; choose a model and load it first")
        if self.volume is None:
            raise ConfigError("no image; open an image (or choose an image layer) first")
        if self._image_set:
            return False
        self.predictor.set_image(self.volume)
        self._image_set = True
        self._synced = False
        return True

    # ------------------------------------------------------------------------------------------ targets
    @property
    def targets(self) -> tuple[TargetView, ...]:
        return self._views()

    def add_target(self, name: str | None = None) -> TargetView:
        id_ = next(self._ids)
        name = self._free_name(name or f"target_{id_}")
        self._targets.append(_Target(id_, name))
        return self._views()[-1]

    def rename(self, id_: int, name: str) -> TargetView:
        name = name.strip()
        if not name:
            raise ConfigError("a target needs a name")
        target = self._get(id_)
        if any(t.name == name and t is not target for t in self._targets):
            raise ConfigError(f"a target named {name!r} exists already; choose another name")
        target.name = name
        return next(v for v in self._views() if v.id == id_)

    def delete(self, id_: int) -> Update:
        target = self._get(id_)
        index = self._active().index(target) if target.active else None
        self._targets.remove(target)
        return self._remove(index) if index is not None else self._update("none")

    def reset(self, id_: int) -> Update:
        target = self._get(id_)
        index = self._active().index(target) if target.active else None
        target.clicks = []
        return self._remove(index) if index is not None else self._update("none")

    def undo(self, id_: int) -> Update:
        """Take back a target's last click. A refinement is restored from the target's own history (no model
        call); taking back its only positive click removes its mask; other targets are left alone."""
        target = self._get(id_)
        if not target.clicks:
            raise ConfigError(f"target {target.name!r} has no click to undo")
        index = self._active().index(target) if target.active else None
        target.clicks.pop()
        if index is None:
            return self._update("none")
        if not target.active:
            return self._remove(index)
        if self._synced:
            try:
                return self._timed(lambda: self._restore(index))
            except ConfigError:  # no refinement state kept for it (e.g. its clicks came in one predict)
                pass
        return self._rerun()

    def click(self, id_: int, point: Any, positive: bool = True) -> Update:
        """One more click on a target (input voxel indices). A click the model refuses (outside the image,
        or outside the target's crop) is not kept and raises its ``DataError``."""
        target = self._get(id_)
        click = Click(tuple(float(v) for v in np.asarray(point, dtype=np.float64).reshape(3)), bool(positive))
        if self.volume is None:
            raise ConfigError("no image; open an image (or choose an image layer) first")
        # Validates the coordinates the way `sammoe segment` does, before anything changes.
        check_target(Target([click.point], [1], target.name, "voxel"), 0, self.volume)
        refine = self._synced and target.active
        target.clicks.append(click)
        try:
            if refine:
                return self._timed(lambda: self._refine(target, click))
            if target.active and self._synced and self._active()[-1] is target:
                return self._timed(lambda: self._add(target))
            if target.active:
                return self._timed(self._predict)
            return self._update("none")
        except BaseException as err:
            target.clicks.pop()
            if not isinstance(err, DataError):  # refused clicks leave the Predictor as it was; others may not
                self._synced = False
            raise

    # ------------------------------------------------------------------------------------------ model calls
    def _active(self) -> list[_Target]:
        return [t for t in self._targets if t.active]

    def _cli_targets(self) -> list[Target]:
        return [
            Target([c.point for c in t.clicks], [int(c.positive) for c in t.clicks], t.name, "voxel")
            for t in self._active()
        ]

    def _refine(self, target: _Target, click: Click) -> str:
        index = self._active().index(target)
        self.predictor.add_click(index, click.point, positive=click.positive, space="voxel")
        self._collect(changed=target)
        return "refine"

    def _predict(self) -> str:
        self.prepare()
        self._synced = False
        targets = self._cli_targets()
        if not targets:
            self._results = {}
            self._labels = np.zeros(self.volume.shape, dtype=np.uint8)
            return "predict"
        self.predictor.predict(targets)
        self._synced = True
        self._collect()
        return "predict"

    def _rerun(self) -> Update:
        return self._timed(self._predict)

    def _restore(self, index: int) -> str:
        self.predictor.undo_click(index)
        self._collect(changed=self._active()[index])
        return "undo"

    def _remove(self, index: int) -> Update:
        """A target's mask is gone: the Predictor drops that one target, the others keep their masks."""
        if not self._synced:
            return self._rerun()

        def remove() -> str:
            self.predictor.remove_target(index)
            self._collect()
            return "remove"

        return self._timed(remove)

    def _add(self, target: _Target) -> str:
        """A target's first positive click, after every other segmented target: decode it alone."""
        clicks = target.clicks
        self.predictor.add_target(
            Target([c.point for c in clicks], [int(c.positive) for c in clicks], target.name, "voxel")
        )
        self._collect()
        return "add"

    def _collect(self, changed: _Target | None = None) -> None:
        """The label map and results after a model call. When one target's mask changed inside its crop,
        only the box its old and new masks span is composed again (later targets win, as in a full map)."""
        self._changed = None
        results = self.predictor.results
        old = self._results.get(changed.id) if changed is not None else None
        new = results[self._active().index(changed)] if changed is not None else None
        if old is None or new is None or old.box is None or new.box is None or self._labels is None:
            seg = self.predictor.segmentation
            self._labels = seg.labels
        else:
            box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(old.box, new.box))
            region = self._labels[box]
            region[...] = 0
            for r in results:
                region[r.mask[box]] = r.value
            self._changed = box
        self._results = {t.id: r for t, r in zip(self._active(), results)}

    def _timed(self, run) -> Update:
        start = time.perf_counter()
        self._changed = None
        path = run()
        seconds = time.perf_counter() - start
        return Update(self._labels, self._views(), path, seconds, self._encodes(), box=self._changed)

    # ------------------------------------------------------------------------------------------ views
    def _views(self) -> tuple[TargetView, ...]:
        values = {t.id: i + 1 for i, t in enumerate(self._active())}
        views = []
        for t in self._targets:
            r = self._results.get(t.id) if t.id in values else None
            extra: dict[str, Any] = {}
            if r is not None:
                extra = {
                    "expert": r.expert,
                    "routed_by": r.routed_by,
                    "confidence": None if not r.gate or r.expert not in r.gate else float(r.gate[r.expert]),
                    "predicted_iou": round(r.predicted_iou, 4),
                    "volume_ml": round(float(r.volume_ml), 3),
                    "voxels": int(r.voxels),
                }
            views.append(TargetView(t.id, t.name, tuple(t.clicks), values.get(t.id, 0), **extra))
        return tuple(views)

    def _update(self, path: str, labels: np.ndarray | None = None, seconds: float = 0.0) -> Update:
        return Update(labels, self._views(), path, seconds, self._encodes())

    def _encodes(self) -> int:
        return int(getattr(self.predictor, "encodes", 0) or 0) if self.predictor is not None else 0

    @property
    def labels(self) -> np.ndarray | None:
        """The current label map (None before any model call)."""
        return self._labels

    def clicks_document(self) -> dict[str, Any]:
        """The clicks file `sammoe segment --clicks` reads (voxel space, one entry per target with a mask, in
        label order) with each target's result beside it under ``results`` (the CLI ignores that key)."""
        views = [v for v in self._views() if v.value]
        doc: dict[str, Any] = {
            "space": "voxel",
            "targets": [
                {
                    "name": v.name,
                    "points": [list(c.point) for c in v.clicks],
                    "labels": [int(c.positive) for c in v.clicks],
                }
                for v in views
            ],
            # the same per-target record `sammoe segment --report` writes
            "results": [self._results[v.id].summary() for v in views if v.id in self._results],
        }
        if self.volume is not None and self.volume.path is not None:
            doc["image"] = str(self.volume.path)
        info = getattr(self.predictor, "info", None)
        if isinstance(info, dict) and isinstance(info.get("model"), dict):
            doc["model"] = {k: v for k, v in info["model"].items() if k in ("name", "checkpoint", "preset")}
        return doc

    # ------------------------------------------------------------------------------------------ helpers
    def _get(self, id_: int) -> _Target:
        for t in self._targets:
            if t.id == id_:
                return t
        raise ConfigError(f"no target with id {id_}; it was deleted")

    def _free_name(self, name: str) -> str:
        taken = {t.name for t in self._targets}
        candidate, n = name, 1
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        return candidate
