"""The dock widget: choose an image and a model, click targets, see which expert segmented each one.

A click on the clicks layer adds a positive click to the selected target (Shift- or Ctrl-click: negative);
with no target yet, one is made. Every model call runs in a worker (``jobs.Jobs``) through the Qt-free
``session.Session``; layers and the table change only in the job's ``done`` handler on the GUI thread, and
only there is the session read. A bad checkpoint, an unreadable file or a refused click shows one line under
the buttons, never a traceback.

Scripting and tests use the same entry points as the buttons: ``open_image(path)``, ``use_layer(layer)``,
``load_model()``, ``add_target(name)``, ``click(voxel, positive)``, ``undo()``, ``reset()``, ``delete()``,
``save(path)``; ``busy`` says whether a job is queued or running, the ``idle`` signal fires when the last one
is done, and ``message`` shows the last error.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
from napari.layers import Image
from napari.layers.base import ActionType
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from sammoe.data.io import read_image
from sammoe.errors import ConfigError
from sammoe.napari.jobs import Jobs, one_line
from sammoe.napari.layers import ImageLayers
from sammoe.napari.models import ModelChoice, load_predictor
from sammoe.napari.panels import ModelPanel, TargetTable
from sammoe.napari.reader import layer_data
from sammoe.napari.session import Session, Update
from sammoe.napari.writer import write_labels

NEGATIVE_MODIFIERS = ("Shift", "Control")
HINT = "Click on the image (clicks layer selected): positive click. Shift- or Ctrl-click: negative click."


def _button(text: str, slot, row: QHBoxLayout) -> QPushButton:
    button = QPushButton(text)
    button.clicked.connect(slot)
    row.addWidget(button)
    return button


class SegmentWidget(QWidget):
    """SAM-Med3D(-MoE) interactive segmentation of the chosen image layer."""

    idle = Signal()  # every queued job has finished and its result is shown

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.layers: ImageLayers | None = None
        self.last_update: Update | None = None
        self.notes: list[str] = []
        self._negative = False
        self._adopting = False
        self._selected: int | None = None
        self.jobs = Jobs(self._progress, self._show_error, self.idle.emit)
        self._build()
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self._layers_changed()

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.setMinimumWidth(580)  # the target table's columns without scrolling
        root = QVBoxLayout(self)
        image_box = QGroupBox("image")
        row = QHBoxLayout(image_box)
        self.image_combo = QComboBox()
        self.image_combo.activated.connect(lambda _: self._combo_chosen())
        row.addWidget(self.image_combo, 1)
        _button("Open...", self._open_dialog, row)
        root.addWidget(image_box)
        model_box = QGroupBox("model")
        self.model_panel = ModelPanel()
        self.model_panel.load_requested.connect(self.load_model)
        QVBoxLayout(model_box).addWidget(self.model_panel)
        root.addWidget(model_box)
        target_box = QGroupBox("targets")
        column = QVBoxLayout(target_box)
        self.table = TargetTable()
        self.table.renamed.connect(self.rename)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        column.addWidget(self.table)
        buttons = QHBoxLayout()
        _button("Add", lambda: self.add_target(), buttons)
        _button("Undo click", self.undo, buttons)
        _button("Reset", self.reset, buttons)
        _button("Delete", self.delete, buttons)
        column.addLayout(buttons)
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        column.addWidget(hint)
        root.addWidget(target_box)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # busy indicator: model calls have no known length
        self.progress.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.note_label = QLabel("")
        self.note_label.setWordWrap(True)
        self.note_label.setStyleSheet("color: #d9a400")
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet("color: #ff6060")
        for w in (self.progress, self.status, self.note_label, self.error_label):
            root.addWidget(w)
        save_row = QHBoxLayout()
        _button("Save segmentation...", self._save_dialog, save_row)
        root.addLayout(save_row)
        root.addStretch(1)

    # ------------------------------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self.jobs.busy

    @property
    def message(self) -> str:
        return self.error_label.text()

    def _progress(self, text: str | None) -> None:
        self.progress.setVisible(text is not None)
        if text is not None:
            self.status.setText(text)

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        if self.layers is not None:  # a refused click: show the clicks the session kept
            self.layers.show_clicks(self.session.targets)
            self.table.show_targets(self.session.targets)

    def _submit(self, work, done) -> None:
        self.error_label.setText("")
        self.jobs.submit(work, done)

    # ------------------------------------------------------------------------------------------ image
    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image) and layer.ndim == 3]

    def _layers_changed(self, event: Any = None) -> None:
        if self._adopting:  # our own clicks and segmentation layers being added or removed
            return
        images = self._image_layers()
        current = None if self.layers is None else self.layers.image
        self.image_combo.clear()
        for layer in images:
            self.image_combo.addItem(layer.name)
        if current in images:
            self.image_combo.setCurrentIndex(images.index(current))
        elif current is not None:  # its image was removed (or the viewer is closing): wait for a choice
            self.layers = None
            self.image_combo.setCurrentIndex(-1)
        elif images and event is not None and getattr(event, "type", "") == "inserted":
            self.use_layer(images[-1])  # the first image opened while the widget is docked
        elif images and event is None:
            self.use_layer(images[-1])  # docked with images already open

    def _combo_chosen(self) -> None:
        images = self._image_layers()
        index = self.image_combo.currentIndex()
        if 0 <= index < len(images) and (self.layers is None or images[index] is not self.layers.image):
            self.use_layer(images[index])

    def _open_dialog(self) -> None:
        # DICOM series folders open through napari's File > Open Folder (the same reader).
        scans = "Scans (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.mgz *.mgh)"
        path, _ = QFileDialog.getOpenFileName(self, "Open a scan", "", f"{scans};;All files (*)")
        if path:
            self.open_image(path)

    def open_image(self, path: str) -> None:
        """Read a NIfTI file or DICOM folder in a worker and add it as an image layer (errors: one line)."""

        def work() -> Generator[str, None, tuple]:
            yield f"reading {path}"
            return layer_data(read_image(path))

        def done(layer: tuple) -> None:
            data, kwargs, _ = layer
            self.use_layer(self.viewer.add_image(data, **kwargs))

        self._submit(work, done)

    def use_layer(self, layer: Image) -> None:
        """Segment this image layer: make its clicks and segmentation layers; targets start empty."""
        self._adopting = True
        try:
            layers = ImageLayers(self.viewer, layer)
            old, self.layers = self.layers, layers
            if old is not None:
                old.detach()
        except Exception as err:  # a layer that is not a usable volume
            self.error_label.setText(one_line(err))
            return
        finally:
            self._adopting = False
        layers.points.mouse_drag_callbacks.insert(0, self._record_modifiers)
        layers.points.events.data.connect(self._points_changed)
        if self.viewer.dims.ndim == 3:  # axial slices in radiological orientation (world axes are RAS)
            self.viewer.dims.order = (2, 1, 0)
            camera = getattr(self.viewer, "scene", self.viewer).camera  # napari 0.9 moved it under scene
            if hasattr(camera, "orientation2d"):
                camera.orientation2d = ("up", "left")
        layers.activate()
        volume = layers.volume

        def work() -> Generator[str, None, Update]:
            yield "new image"
            return self.session.set_volume(volume)

        self._submit(work, self._apply)

    # ------------------------------------------------------------------------------------------ model
    def load_model(self) -> None:
        """(Re)load the model chosen in the panel; targets are segmented again with it."""
        choice = self.model_panel.choice()

        def work() -> Generator[str, None, Update]:
            predictor = yield from self._load(choice)
            if self.session.volume is not None and any(t.value for t in self.session.targets):
                yield "segmenting every target with the new model"
            return self.session.set_predictor(predictor)

        self._submit(work, self._apply)

    def _load(self, choice: ModelChoice) -> Generator[str, None, Any]:
        yield f"loading {choice.checkpoint or 'the model'}"
        predictor, self.notes = load_predictor(choice)
        return predictor

    # ------------------------------------------------------------------------------------------ targets
    def _selection_changed(self) -> None:
        # Jobs read the selected target when they start (after earlier jobs' results are shown), from a plain
        # attribute: a worker thread must not touch the table.
        self._selected = self.table.current_id()

    def add_target(self, name: str | None = None) -> None:
        def work() -> Generator[str, None, tuple[Update, int]]:
            yield "new target"
            view = self.session.add_target(name)
            return self.session.snapshot(), view.id

        self._submit(work, lambda result: self._apply(*result))

    def rename(self, id_: int, name: str) -> None:
        def work() -> Generator[str, None, Update]:
            yield "renaming"
            self.session.rename(id_, name)
            return self.session.snapshot()

        self._submit(work, self._apply)

    def _on_target(self, method: str, verb: str) -> None:
        def work() -> Generator[str, None, Update]:
            id_ = self._selected
            if id_ is None:
                raise ConfigError(f"select a target to {verb}")
            yield f"{verb}: segmenting the remaining clicks again"
            return getattr(self.session, method)(id_)

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

    # ------------------------------------------------------------------------------------------ clicks
    def _record_modifiers(self, layer: Any, event: Any) -> None:
        """Mouse press on the clicks layer (before napari adds the point on release): remember the sign."""
        modifiers = {str(m) for m in (getattr(event, "modifiers", None) or ())}
        self._negative = bool(modifiers & set(NEGATIVE_MODIFIERS)) or getattr(event, "button", 1) == 2

    def _points_changed(self, event: Any) -> None:
        if self.layers is None or self.layers.syncing or event.action != ActionType.ADDED:
            return
        count = len(self.layers.points.data)
        for index in sorted(int(i) % count for i in event.data_indices):  # napari reports -1 for "the last"
            self.layers.mark_sign(index, not self._negative)
            self.click(self.layers.click_position(index), positive=not self._negative)
        self._negative = False

    def click(self, voxel: Any, positive: bool = True, target: int | None = None) -> None:
        """One click at stored voxel indices on the selected target (or ``target``; a new one when none)."""
        point = np.asarray(voxel, dtype=np.float64).reshape(3).copy()
        choice = None if self.session.predictor is not None else self.model_panel.choice()

        def work() -> Generator[str, None, tuple[Update, int]]:
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

    # ------------------------------------------------------------------------------------------ results
    def _apply(self, update: Update, current: int | None = None) -> None:
        """Show an update (GUI thread; no worker runs now, so the session may be read)."""
        self.last_update = update
        if self.layers is not None:
            self.layers.show_labels(update.labels, update.box)
            self.layers.show_clicks(update.targets)
            self.layers.set_clicks_document(self.session.clicks_document())
        self.table.show_targets(update.targets, current)
        self.note_label.setText("\n".join(self.notes))
        if update.path == "refine":
            self.status.setText(f"refined on the cached embedding in {update.seconds * 1000:.0f} ms")
        elif update.path in ("undo", "remove"):
            self.status.setText(f"{update.path} without a model call in {update.seconds * 1000:.0f} ms")
        elif update.path == "add":
            self.status.setText(f"new target segmented in {update.seconds:.2f} s (the others kept)")
        elif update.path == "predict":
            self.status.setText(
                f"segmented in {update.seconds:.2f} s ({update.encodes} crop(s) encoded so far)"
            )
        else:
            self.status.setText("")

    # ------------------------------------------------------------------------------------------ saving
    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save segmentation", "", "NIfTI (*.nii.gz *.nii)")
        if path:
            self.save(path)

    def save(self, path: str) -> list[str]:
        """Write the label map (NIfTI on the source grid) and ``<name>.clicks.json``; errors: one line."""
        if self.layers is None:
            self.error_label.setText("nothing to save: open an image and click a target first")
            return []
        labels = self.layers.labels
        try:
            written = write_labels(
                path, labels.data, {"metadata": labels.metadata, "affine": labels.affine.affine_matrix}
            )
        except Exception as err:
            self.error_label.setText(one_line(err))
            return []
        self.status.setText("saved " + ", ".join(written))
        return written
