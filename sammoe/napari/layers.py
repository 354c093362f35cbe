"""The layers of the image being segmented: the image, its clicks (points) and its segmentation (labels).

All three share the image's affine and ``units="mm"``, so points and labels data coordinates are the image's
voxel indices (``geometry.Display``). The labels layer shows a view of one stored-order array that is updated
in place after every model call; the points layer is redrawn from the session's clicks (green positive, red
negative; 3 mm wide and half transparent, so the mask shows through), so what it shows is always what the
model was given. What the user does with napari's own tools is read back: points moved or deleted
(``edited_clicks``) and voxels painted or erased (``painted``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sammoe.data.io import Volume, as_volume
from sammoe.errors import DataError
from sammoe.napari.geometry import Display
from sammoe.napari.reader import META_KEY
from sammoe.napari.views import Click, TargetView

POSITIVE = (0.2, 0.95, 0.2, 1.0)
NEGATIVE = (0.95, 0.15, 0.15, 1.0)
CLICK_MM = 3.0  # marker diameter: marks the voxel clicked without hiding the mask around it
CLICK_OPACITY = 0.6
MIN_PIXELS = 5  # zoomed out, a marker never shrinks below this many screen pixels


def marker_size(spacing: Any) -> float:
    """Marker diameter in data units (voxels) for ``CLICK_MM``. napari measures a marker along the screen's
    horizontal axis, an in-plane axis in the usual views, so the finest spacing converts it."""
    return CLICK_MM / float(np.min(np.abs(np.asarray(spacing, dtype=np.float64))))


def warm_up_layers() -> None:
    """Make a labels and a points layer once, outside any viewer, so the modules napari imports for its first
    ones (pandas for their features, and more: 1-2 s) are loaded by the caller's thread, a worker."""
    from napari.layers import Labels, Points

    Labels(np.zeros((2, 2, 2), dtype=np.uint8))
    Points(np.zeros((1, 3)))


def volume_of(layer: Any) -> tuple[Volume, Display]:
    """The volume an image layer shows: the one the sammoe reader read, else the layer's array with its
    data -> world transform taken as voxel -> RAS mm."""
    ours = (layer.metadata or {}).get(META_KEY) or {}
    if isinstance(ours.get("volume"), Volume) and isinstance(ours.get("display"), Display):
        return ours["volume"], ours["display"]
    if getattr(layer, "multiscale", False) or getattr(layer, "rgb", False) or np.ndim(layer.data) != 3:
        raise DataError(f"layer {layer.name!r}: choose a 3D grey image layer (not RGB, multiscale or 2D/4D)")
    origin = np.asarray(layer.data_to_world(np.zeros(3)), dtype=np.float64)
    affine = np.eye(4)
    for axis in range(3):
        step = np.zeros(3)
        step[axis] = 1.0
        affine[:3, axis] = np.asarray(layer.data_to_world(step), dtype=np.float64) - origin
    affine[:3, 3] = origin
    return as_volume(np.asarray(layer.data), affine), Display.as_is(affine)


class ImageLayers:
    """An image layer and the clicks and segmentation layers made for it."""

    def __init__(self, viewer: Any, image: Any) -> None:
        self.viewer = viewer
        self.image = image
        self.volume, self.display = volume_of(image)
        self.stored = np.zeros(self.volume.shape, dtype=np.uint8)  # the label map in stored axis order
        meta = {META_KEY: {"volume": self.volume, "display": self.display, "clicks": None}}
        common = {"affine": self.display.affine, "units": "mm"}
        self.labels = viewer.add_labels(
            self.display.view(self.stored), name=f"{image.name} segmentation", metadata=meta, **common
        )
        self.points = viewer.add_points(
            np.empty((0, 3)),
            name=f"{image.name} clicks",
            size=marker_size(self.volume.spacing),
            opacity=CLICK_OPACITY,
            canvas_size_limits=(MIN_PIXELS, 10_000),
            border_width=0,
            projection_mode="none",  # a click shows on its own slice only
            **common,
        )
        self.syncing = False  # set while the points layer is redrawn, so its data events are not clicks
        self.shown: list[tuple[int, Click]] = []  # (target id, click) of each point, in the layer's order

    def activate(self) -> None:
        """Make the clicks layer the one that receives clicks, in add mode."""
        self.viewer.layers.selection.active = self.points
        self.points.mode = "add"

    def click_position(self, index: int) -> np.ndarray:
        """Stored voxel indices of the point at ``index`` of the clicks layer."""
        return self.display.to_stored(np.asarray(self.points.data)[index])[0]

    def mark_sign(self, index: int, positive: bool) -> None:
        """Colour a point napari just added, before the model has seen it."""
        colors = np.array(self.points.face_color, dtype=np.float64)
        colors[index] = POSITIVE if positive else NEGATIVE
        self.points.face_color = colors

    def show_clicks(self, targets: Sequence[TargetView]) -> None:
        """Make the points layer show exactly the session's clicks. Resetting a Points layer's data costs
        about 20 ms of GUI time, so when napari already drew the clicked point nothing is reset."""
        self.shown = [(t.id, c) for t in targets for c in t.clicks]
        clicks = [c for _, c in self.shown]
        data = self.display.to_layer(np.array([c.point for c in clicks], dtype=np.float64).reshape(-1, 3))
        colors = np.array([POSITIVE if c.positive else NEGATIVE for c in clicks], dtype=np.float64)
        self.syncing = True
        try:
            current = np.asarray(self.points.data, dtype=np.float64)
            if current.shape != data.shape or not np.array_equal(current, data):
                self.points.data = data
            if len(clicks) and not np.allclose(np.asarray(self.points.face_color)[:, :4], colors):
                self.points.face_color = colors
            if self.points.selected_data:
                self.points.selected_data = set()
        finally:
            self.syncing = False

    def edited_clicks(self, removed: bool, indices: Sequence[int]) -> dict[int, list[Click]]:
        """After the user removed (``removed``) or moved points with napari's tools: the clicks each target
        they belong to has now. Points added since the last redraw (not clicks yet) are left out."""
        data = self.display.to_stored(np.asarray(self.points.data, dtype=np.float64))
        shown = self.shown
        if removed:
            gone = {int(i) for i in indices} if len(data) else set(range(len(shown)))
            rows = [row for i, row in enumerate(shown) if i not in gone]
        elif len(data) >= len(shown):  # moved in place (or data set with the same points first)
            rows = [
                (id_, Click(tuple(float(v) for v in data[i]), c.positive)) for i, (id_, c) in enumerate(shown)
            ]
        else:  # data set with fewer points: those still there, in order
            rows, j = [], 0
            for id_, c in shown:
                if j < len(data) and np.allclose(data[j], c.point):
                    rows.append((id_, c))
                    j += 1
            if j != len(data):
                return {}
        edited = {}
        for id_ in dict.fromkeys(i for i, _ in shown):
            now = [c for i, c in rows if i == id_]
            if now != [c for i, c in shown if i == id_]:
                edited[id_] = now
        return edited

    def watch_history(self, changed: Callable[[], None]) -> None:
        """Call ``changed`` after napari's own undo or redo on the segmentation layer (Ctrl+Z while painting),
        which writes the layer's data without the paint event that a brush stroke sends."""
        for name in ("undo", "redo"):
            original = getattr(self.labels, name)

            def replay(original: Callable[[], None] = original) -> None:
                original()
                changed()

            setattr(self.labels, name, replay)

    def painted(self, atoms: Sequence[Any]) -> tuple[tuple[np.ndarray, ...], np.ndarray] | None:
        """The voxels a napari paint event changed (stored index arrays) and their new values, from the event
        itself: napari emits it before it writes the layer's data. napari 0.9 records a bounding box, a mask
        and the label painted; earlier versions (indices, old values, new values)."""
        indices, values = [], []
        for atom in atoms:
            box = getattr(atom, "slice_key", None)
            if box is not None:
                mask = atom.mask if atom.mask is not None else np.ones([s.stop - s.start for s in box], bool)
                found = tuple(i + s.start for i, s in zip(np.nonzero(mask), box))
                new = np.full(found[0].shape, atom.new_value)
            elif isinstance(atom, tuple) and len(atom) == 3:
                found = tuple(np.asarray(i, dtype=np.intp).reshape(-1) for i in atom[0])
                new = np.broadcast_to(np.asarray(atom[2]).reshape(-1), found[0].shape)
            else:
                continue
            indices.append(found)
            values.append(new)
        if not indices:
            return None
        shown = tuple(np.concatenate([f[axis] for f in indices]).astype(np.intp) for axis in range(3))
        return tuple(shown[r] for r in self.display.inverse), np.concatenate(values)

    def show_labels(self, labels: np.ndarray | None, box: tuple[slice, ...] | None = None) -> None:
        """Copy a label map (stored order) into the layer's array, only inside ``box`` when the update says
        that is all that changed, and redraw."""
        if labels is None:
            return
        if labels.shape != self.stored.shape or labels.dtype != self.stored.dtype:
            self.stored = np.array(labels)  # more than 255 targets: uint16
            self.labels.data = self.display.view(self.stored)
            return
        if box is None:
            np.copyto(self.stored, labels)
        else:
            self.stored[box] = labels[box]
        self.labels.refresh()

    def set_clicks_document(self, document: dict[str, Any]) -> None:
        """What the writer saves beside the label map (``seg.clicks.json``)."""
        self.labels.metadata[META_KEY]["clicks"] = document

    @property
    def clicks_document(self) -> dict[str, Any] | None:
        return self.labels.metadata[META_KEY]["clicks"]

    def detach(self) -> None:
        """Another image is segmented now: its clicks layer goes (the clicks live in the session, which starts
        over), its segmentation layer stays as the user's result."""
        if self.points in self.viewer.layers:
            self.viewer.layers.remove(self.points)
