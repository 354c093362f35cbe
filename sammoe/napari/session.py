"""Interactive segmentation state for a viewer, without Qt or napari (unit-testable on its own).

Every target's clicks are the source of truth; the ``Predictor`` only caches what they produce. Each
operation costs what it changes: a refinement click goes through ``Predictor.add_click`` (the cached
embedding and the previous low-res logits), a new target's first positive click decodes it alone
(``add_target``), undo restores the state before the last refinement without a model call (``undo_click``),
reset and delete drop one target (``remove_target``), a target whose clicks were moved or deleted, or whose
decoder was chosen, is decoded again alone (removed and added). Each mask depends only on its target's clicks
(and route), so the label map equals what ``sammoe segment`` writes for ``clicks_document()``.

The session composes the label map itself (``labelmap``), so the Predictor's order of targets may differ
from the label values: targets with a positive click get 1, 2, ... in the order they were added (the order
of the clicks file); a locked target shows the voxels the user keeps (``edit``), which no model call changes.

- ``Session(predictor=None)``; ``set_volume(volume)``, ``set_predictor(predictor)``, ``prepare()``.
- ``add_target(name=None)``, ``rename(id, name)``, ``click(id, point, positive)``, ``undo(id)``,
  ``reset(id)``, ``delete(id)``, ``set_clicks(id, clicks)``, ``set_route(id, route)``, ``lock(id)``,
  ``unlock(id)``, ``edit(indices, values)``, ``adopt(label_map)``: each returns an ``Update`` (a snapshot
  the UI may read from another thread).
- ``clicks_document()``: the ``sammoe segment --clicks`` JSON (voxel space) plus each target's result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sammoe.data.io import Volume
from sammoe.errors import ConfigError, DataError
from sammoe.inference.targets import Target, TargetResult, check_target, voxel_ml
from sammoe.napari import labelmap
from sammoe.napari.targetlist import TargetList
from sammoe.napari.views import ROUTED, Click, SessionTarget, TargetView, Update, clicks_document, target_view

__all__ = ["Click", "Session", "TargetView", "Update"]


class Session:
    """The clicks of every target on one image, and the Predictor that turns them into a label map."""

    def __init__(self, predictor: Any = None) -> None:
        self.predictor = predictor
        self.volume: Volume | None = None
        self._list = TargetList()
        self._image_set = False  # the predictor holds this volume (resampled)
        self._synced = False  # the predictor holds exactly the active targets, in the order of ``_order``
        self._order: list[int] = []  # target ids in the predictor's order
        self._results: dict[int, TargetResult] = {}
        self._map = labelmap.LabelMap()
        self._changed: labelmap.Box | None = None

    # ------------------------------------------------------------------------------------------ setup
    def set_volume(self, volume: Volume) -> Update:
        """A new image: every target is dropped; the image is resampled on the next model call."""
        self.volume = volume
        self._list.clear()
        self._order = []
        self._image_set = self._synced = False
        self._results, self._map = {}, labelmap.LabelMap()
        return self._update("none")

    def set_predictor(self, predictor: Any) -> Update:
        """Another model: every target is segmented again with it (a chosen decoder it lacks is dropped)."""
        self.predictor = predictor
        self._image_set = self._synced = False
        for t in self._list.items:
            if t.route not in (ROUTED, *self.decoders):
                t.route = ROUTED
        if self.volume is None or not self._list.active():
            return self._update("none")
        return self._timed(self._predict)

    @property
    def decoders(self) -> tuple[str, ...]:
        """The loaded model's decoders ("foundation" first), which a target may be routed to."""
        return tuple(getattr(self.predictor, "expert_names", None) or ())

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
        id_ = self._list.add(name).id
        return next(v for v in self._views() if v.id == id_)

    def rename(self, id_: int, name: str) -> TargetView:
        self._list.rename(id_, name)
        return next(v for v in self._views() if v.id == id_)

    def delete(self, id_: int) -> Update:
        """Remove a target (a locked one too: its kept voxels go with it)."""
        target = self._list.get(id_)
        self._list.remove(target)
        self._map.kept.pop(id_, None)
        return self._drop(id_) if target.active else self._update("none")

    def reset(self, id_: int) -> Update:
        target = self._list.unlocked(id_, "reset it")
        active, target.clicks = target.active, []
        return self._drop(id_) if active else self._update("none")

    def undo(self, id_: int) -> Update:
        """Take back a target's last click. A refinement is restored from the target's own history (no model
        call); taking back its only positive click removes its mask; other targets are left alone."""
        target = self._list.unlocked(id_, "undo its clicks")
        if not target.clicks:
            raise ConfigError(f"target {target.name!r} has no click to undo")
        active = target.active
        target.clicks.pop()
        if not active:
            return self._update("none")
        if not target.active:
            return self._drop(id_)
        if self._synced:
            try:
                return self._timed(lambda: self._restore(target))
            except ConfigError:  # no refinement state kept for it (e.g. its clicks came in one predict)
                pass
        return self._rerun_target(target)

    def click(self, id_: int, point: Any, positive: bool = True) -> Update:
        """One more click on a target (input voxel indices). A click the model refuses (outside the image,
        or outside the target's crop) is not kept and raises its ``DataError``."""
        target = self._list.unlocked(id_, "click on it")
        click = Click(tuple(float(v) for v in np.asarray(point, dtype=np.float64).reshape(3)), bool(positive))
        self._check([click.point], target.name)
        refine = self._synced and id_ in self._order
        target.clicks.append(click)
        try:
            if refine:
                return self._timed(lambda: self._refine(target, click))
            if target.active and self._synced:
                return self._timed(lambda: self._add(target))
            if target.active:
                return self._timed(self._predict)
            return self._update("none")
        except BaseException as err:
            target.clicks.pop()
            if not isinstance(err, DataError):  # refused clicks leave the Predictor as it was; others may not
                self._synced = False
            raise

    def set_clicks(self, id_: int, clicks: Sequence[Click]) -> Update:
        """The user moved or deleted clicks with the viewer's own tools: the target is decoded again from the
        clicks it has now (alone); without a positive click left its mask goes."""
        target = self._list.unlocked(id_, "move its clicks")
        clicks = [Click(tuple(float(v) for v in c.point), bool(c.positive)) for c in clicks]
        if clicks == target.clicks:
            return self._update("none")
        if clicks:
            self._check([c.point for c in clicks], target.name)
        return self._change(target, "clicks", clicks)

    def set_route(self, id_: int, route: str | None) -> Update:
        """Segment this target with one decoder ("foundation" or an expert; None: the model routes it),
        decoding it again alone; the saved clicks file records the choice."""
        target = self._list.unlocked(id_, "change its decoder")
        if route is not ROUTED and self.predictor is not None and route not in self.decoders:
            raise ConfigError(f"decoder {route!r} is not loaded; choose one of {', '.join(self.decoders)}")
        if route == target.route:
            return self._update("none")
        return self._change(target, "route", route)

    # ------------------------------------------------------------------------------------------ user voxels
    def lock(self, id_: int) -> Update:
        """Keep a target's voxels as the label map shows them now (the user's edits included): no model call
        changes them again, and its clicks stay as they are until it is unlocked."""
        target = self._list.get(id_)
        value = self._list.values().get(id_, 0)
        if not value or self._map.array is None:
            raise ConfigError(f"target {target.name!r} has no mask to lock yet; click on it first")
        target.locked = True
        self._map.lock(id_, value)
        return self._update("lock")

    def unlock(self, id_: int) -> Update:
        """Give a locked target back to the model: its edits are dropped and its model mask shows again."""
        target = self._list.get(id_)
        target.locked = False
        kept = self._map.kept.pop(id_, None)
        result = self._results.get(id_)
        if kept is None or result is None:
            return self._update("unlock")
        return self._recompose("unlock", None if result.box is None else labelmap.union(kept.box, result.box))

    def edit(self, indices: Sequence[np.ndarray], values: Any) -> Update:
        """The user painted (or erased) these voxels (stored index arrays) of the label map. Every target
        painted, or erased to 0, is locked, so its edited voxels are kept through later clicks."""
        if self.volume is None:
            raise ConfigError("no image; open an image (or choose an image layer) first")
        ids = {v: id_ for id_, v in self._list.values().items()}
        box, keeping = self._map.edit(self.volume.shape, indices, values, ids)
        for id_ in keeping:
            self._list.get(id_).locked = True
        labels = None if box is None else self._map.array
        return Update(labels, self._views(), "edit", box=box, decoders=self.decoders)

    def adopt(self, shown: np.ndarray) -> Update:
        """The label map as the viewer shows it now, after napari's own undo or redo of a paint (which
        writes the layer without a paint event): every voxel that differs from the session's map is an
        ``edit``, so an undone brush stroke is not drawn again by the next click."""
        current = self._map.array
        if current is None or shown.shape != current.shape:
            return self._update("none")
        changed = np.nonzero(shown != current)
        if not changed[0].size:
            return self._update("none")
        return self.edit(changed, shown[changed])

    # ------------------------------------------------------------------------------------------ model calls
    def _target(self, t: SessionTarget) -> Target:
        """The target as a clicks file gives it to ``sammoe segment`` (its chosen decoder included)."""
        points = [c.point for c in t.clicks]
        return Target(points, [int(c.positive) for c in t.clicks], t.name, "voxel", route=t.route)

    def _change(self, target: SessionTarget, attribute: str, value: Any) -> Update:
        """Set a target's clicks or route and decode it again alone (all targets when out of step)."""
        before, was_active = getattr(target, attribute), target.active
        setattr(target, attribute, value)
        try:
            if not target.active:
                return self._drop(target.id) if was_active else self._update("none")
            if self._synced and was_active:
                return self._rerun_target(target)
            if self._synced:
                return self._timed(lambda: self._add(target))
            return self._timed(self._predict)
        except BaseException as err:
            setattr(target, attribute, before)
            if not isinstance(err, DataError):
                self._synced = False
            raise

    def _refine(self, target: SessionTarget, click: Click) -> str:
        index = self._order.index(target.id)
        self.predictor.add_click(index, click.point, positive=click.positive, space="voxel")
        self._collect(self._box_of(target, self._results.get(target.id)))
        return "refine"

    def _restore(self, target: SessionTarget) -> str:
        old = self._results.get(target.id)
        self.predictor.undo_click(self._order.index(target.id))
        self._collect(self._box_of(target, old))
        return "undo"

    def _add(self, target: SessionTarget) -> str:
        """A target's first positive click (the Predictor has the others): decode it alone."""
        self.predictor.add_target(self._target(target))
        self._order.append(target.id)
        last = self._list.active()[-1] is target  # else the label values after it move up: a full map
        self._collect(self._box_of(target, None) if last else None)
        return "add"

    def _rerun_target(self, target: SessionTarget) -> Update:
        """Decode one target again from its clicks, alone: the Predictor drops it and adds it back last (the
        session keeps its label value)."""
        if not self._synced:
            return self._timed(self._predict)

        def rerun() -> str:
            old = self._results.get(target.id)
            self.predictor.remove_target(self._order.index(target.id))
            self._order.remove(target.id)
            self.predictor.add_target(self._target(target))
            self._order.append(target.id)
            self._collect(self._box_of(target, old))
            return "rerun"

        return self._timed(rerun)

    def _predict(self) -> str:
        """Every target decoded again, as ``sammoe segment`` decodes the clicks file."""
        self.prepare()
        self._synced = False
        active = self._list.active()
        self._results, self._order = {}, []
        if active:
            self.predictor.predict([self._target(t) for t in active])
            self._order = [t.id for t in active]
        self._synced = bool(active)  # with none, the Predictor still holds the targets it had
        self._collect(None)
        return "predict"

    def _drop(self, id_: int) -> Update:
        """A target's mask is gone: the Predictor drops that one target, the others keep their masks."""
        if not self._synced:
            return self._timed(self._predict)

        def remove() -> str:
            if id_ in self._order:
                self.predictor.remove_target(self._order.index(id_))
                self._order.remove(id_)
            self._collect(None)
            return "remove"

        return self._timed(remove)

    def _recompose(self, path: str, box: labelmap.Box | None = None) -> Update:
        def run() -> str:
            self._collect(box)
            return path

        return self._timed(run)

    def _box_of(self, target: SessionTarget, old: TargetResult | None) -> labelmap.Box | None:
        """Where a target's change shows: its old and new masks' boxes (None: anywhere)."""
        new = self.predictor.results[self._order.index(target.id)]
        if new.box is None or (old is not None and old.box is None):
            return None
        return labelmap.union(None if old is None else old.box, new.box)

    def _collect(self, box: labelmap.Box | None) -> None:
        """Results and label map after a change: only inside ``box`` when that is all a change can touch,
        else the whole map (a target removed or added before others: the label values moved)."""
        self._results = dict(zip(self._order, self.predictor.results)) if self._order else {}
        targets = [(t.id, self._results.get(t.id)) for t in self._list.active()]
        self._changed = self._map.compose(self.volume.shape, targets, box)

    def _timed(self, run: Callable[[], str]) -> Update:
        start = time.perf_counter()
        self._changed = None
        path = run()
        seconds = time.perf_counter() - start
        return Update(
            self._map.array, self._views(), path, seconds, self._encodes(), self._changed, self.decoders
        )

    # ------------------------------------------------------------------------------------------ views
    def _views(self) -> tuple[TargetView, ...]:
        values = self._list.values()
        ml = voxel_ml(self.volume) if self.volume is not None else 0.0
        return tuple(
            target_view(t, values.get(t.id, 0), self._results.get(t.id), self._map.voxels.get(t.id), ml)
            for t in self._list.items
        )

    def _update(self, path: str) -> Update:
        return Update(None, self._views(), path, 0.0, self._encodes(), decoders=self.decoders)

    def _encodes(self) -> int:
        return int(getattr(self.predictor, "encodes", 0) or 0) if self.predictor is not None else 0

    @property
    def labels(self) -> np.ndarray | None:
        """The current label map (None before any model call)."""
        return self._map.array

    def clicks_document(self) -> dict[str, Any]:
        """The clicks file `sammoe segment --clicks` reads, with each target's result under ``results``."""
        image = None if self.volume is None else self.volume.path
        return clicks_document(self._views(), self._results, image, getattr(self.predictor, "info", None))

    # ------------------------------------------------------------------------------------------ helpers
    def _check(self, points: Sequence[Sequence[float]], name: str) -> None:
        """The coordinates checked the way `sammoe segment` does, before anything changes."""
        if self.volume is None:
            raise ConfigError("no image; open an image (or choose an image layer) first")
        check_target(Target([list(p) for p in points], [1] * len(points), name, "voxel"), 0, self.volume)
