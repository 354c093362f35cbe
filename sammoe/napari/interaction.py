"""What the user does to targets, as jobs on the session: clicks on the canvas, napari's own point and brush
tools, the table's buttons, menus and lock boxes, and the keyboard shortcuts.

``TargetActions`` is a part of ``SegmentWidget`` (a mixin): its methods run on the GUI thread and queue a
job; the job runs the session in a worker and its ``Update`` is shown by ``SegmentWidget._apply``. A job
reads the selected target when it starts (after earlier jobs' results are shown) from a plain attribute:
a worker thread must not touch the table.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
from napari.layers.base import ActionType

from sammoe.errors import ConfigError
from sammoe.napari.views import Click

NEGATIVE_MODIFIERS = ("Shift", "Control")


class TargetActions:
    """Target operations of the segmentation widget (see the module docstring)."""

    session: Any
    layers: Any
    table: Any
    last_update: Any
    negative_mode: bool  # plain clicks are negative (the T key)
    _selected: int | None
    _negative: bool | None  # the sign of the click being made (None: no mouse press seen)

    # ------------------------------------------------------------------------------------------ targets
    def _selection_changed(self) -> None:
        self._selected = self.table.current_id()

    def add_target(self, name: str | None = None) -> None:
        def work() -> Generator[str, None, tuple[Any, int]]:
            yield "new target"
            view = self.session.add_target(name)
            return self.session.snapshot(), view.id

        self._submit(work, lambda result: self._apply(*result))

    def rename(self, id_: int, name: str) -> None:
        def work() -> Generator[str, None, Any]:
            yield "renaming"
            self.session.rename(id_, name)
            return self.session.snapshot()

        self._submit(work, self._apply)

    def _on_target(self, method: str, verb: str, *args: Any, id_: int | None = None) -> None:
        def work() -> Generator[str, None, Any]:
            target = self._selected if id_ is None else id_
            if target is None:
                raise ConfigError(f"select a target to {verb}")
            yield verb
            return getattr(self.session, method)(target, *args)

        self._submit(work, self._apply)

    def undo(self) -> None:
        """Take back the selected target's last click."""
        self._on_target("undo", "undo")

    def reset(self) -> None:
        """Remove every click (and the mask) of the selected target."""
        self._on_target("reset", "reset")

    def delete(self) -> None:
        """Remove the selected target."""
        self._on_target("delete", "delete")

    def set_locked(self, id_: int, locked: bool) -> None:
        """Lock a target's voxels as they are (brush edits kept), or give it back to the model."""
        self._on_target("lock" if locked else "unlock", "lock" if locked else "unlock", id_=id_)

    def toggle_lock(self) -> None:
        """Lock the selected target, or unlock it (as the table showed it last)."""
        shown = self.last_update.targets if self.last_update is not None else ()
        view = next((t for t in shown if t.id == self._selected), None)
        if view is not None:
            self.set_locked(view.id, not view.locked)

    def set_route(self, id_: int, route: str | None) -> None:
        """Segment one target with this decoder (None: the model routes it); only that target runs again."""
        self._on_target("set_route", f"segmenting with {route or 'routing'}", route, id_=id_)

    def next_target(self) -> None:
        """Select the next target in the table; after the last one, a new target."""
        ids = self.table.ids
        current = self.table.current_id()
        if current in ids and ids.index(current) + 1 < len(ids):
            self.table.select_id(ids[ids.index(current) + 1])
        else:
            self.add_target()

    def toggle_sign(self, negative: bool | None = None) -> None:
        """Plain clicks become negative (Shift- or Ctrl-clicks positive), or back."""
        self.negative_mode = (not self.negative_mode) if negative is None else bool(negative)
        self._sign_changed()

    # ------------------------------------------------------------------------------------------ clicks
    def _record_modifiers(self, layer: Any, event: Any) -> None:
        """Mouse press on the clicks layer (before napari adds the point on release): remember the sign."""
        modifiers = {str(m) for m in (getattr(event, "modifiers", None) or ())}
        flipped = bool(modifiers & set(NEGATIVE_MODIFIERS)) or getattr(event, "button", 1) == 2
        self._negative = flipped != self.negative_mode

    def _points_changed(self, event: Any) -> None:
        if self.layers is None or self.layers.syncing:
            return
        if event.action == ActionType.ADDED:
            count = len(self.layers.points.data)
            negative = self._negative if self._negative is not None else self.negative_mode
            for index in sorted(int(i) % count for i in event.data_indices):  # napari reports -1: the last
                self.layers.mark_sign(index, not negative)
                self.click(self.layers.click_position(index), positive=not negative)
            self._negative = None
        elif event.action in (ActionType.REMOVED, ActionType.CHANGED):
            removed = event.action == ActionType.REMOVED
            for id_, clicks in self.layers.edited_clicks(removed, event.data_indices).items():
                self.set_clicks(id_, clicks)

    def set_clicks(self, id_: int, clicks: list[Click]) -> None:
        """A target's clicks as the user left them with napari's point tools: it is segmented again."""
        self._on_target("set_clicks", "segmenting the target from its clicks", clicks, id_=id_)

    def _labels_history(self) -> None:
        """napari undid or redid a paint on the segmentation layer: the session adopts what the layer shows
        (a copy: napari may write the layer again while the worker compares)."""
        if self.layers is None:
            return
        shown = np.array(self.layers.stored)

        def work() -> Generator[str, None, Any]:
            yield "keeping your edit"
            return self.session.adopt(shown)

        self._submit(work, self._apply)

    def _labels_painted(self, event: Any) -> None:
        """The user painted or erased on the segmentation layer: the session keeps those voxels."""
        if self.layers is None:
            return
        painted = self.layers.painted(getattr(event, "value", None) or ())
        if painted is None:
            return
        indices, values = painted

        def work() -> Generator[str, None, Any]:
            yield "keeping your edit"
            return self.session.edit(indices, values)

        self._submit(work, self._apply)

    def click(self, voxel: Any, positive: bool = True, target: int | None = None) -> None:
        """One click at stored voxel indices on the selected target (or ``target``; a new one when none)."""
        point = np.asarray(voxel, dtype=np.float64).reshape(3).copy()
        choice = None if self.session.predictor is not None else self.model_panel.choice()

        def work() -> Generator[str, None, tuple[Any, int]]:
            if choice is not None and self.session.predictor is None:
                self.session.set_predictor((yield from self._load(choice)))
            id_ = target if target is not None else self._selected
            if id_ is None or all(t.id != id_ for t in self.session.targets):
                id_ = self.session.add_target().id
            if self.session.needs_image:
                yield "first click on this image: resampling it and encoding the crop"
                self.session.prepare()
            else:
                yield "segmenting"
            return self.session.click(id_, point, positive), id_

        self._submit(work, lambda result: self._apply(*result))
