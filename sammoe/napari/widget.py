"""The dock widget: choose an image layer and a model, click targets, see which decoder segmented each one,
correct with napari's own tools, save.

Docking returns at once: nothing here imports torch or runs plugin discovery on napari's GUI thread; a worker
finds the devices and installed experts (and the model loads there on the first click). Model calls run one
at a time in napari worker threads (``jobs``), with torch's threads pinned to leave napari a core
(``threads``); layers are touched only on the GUI thread. The busy indicator is a static label shown only
when a job outlasts a glance (``busy``): an animated bar starved the worker under software OpenGL. Target
operations are in ``interaction``; keys in ``shortcuts``; saving in ``export``.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from napari.layers import Image
from qtpy.QtCore import QEvent, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from sammoe.data.io import read_image
from sammoe.napari import threads
from sammoe.napari.busy import DelayedBusy
from sammoe.napari.export import FORMATS, export
from sammoe.napari.interaction import TargetActions
from sammoe.napari.jobs import Jobs, one_line
from sammoe.napari.layers import ImageLayers, warm_up_layers
from sammoe.napari.models import ModelChoice, load_predictor, options
from sammoe.napari.panels import ExportPanel, ModelPanel
from sammoe.napari.reader import layer_data
from sammoe.napari.session import Session, Update
from sammoe.napari.shortcuts import Shortcuts, tooltip
from sammoe.napari.table import TargetTable

HINT = (
    "Click on the image (clicks layer selected): a positive click; Shift- or Ctrl-click: a negative one. "
    "Move or delete clicks with napari's point tools; paint on the segmentation to correct a target (that "
    "locks it: later clicks never change its voxels)."
)
BUSY = "working..."
STATUS = {
    "refine": "refined on the cached embedding in {ms:.0f} ms",
    "undo": "undo without a model call in {ms:.0f} ms",
    "remove": "removed without a model call in {ms:.0f} ms",
    "add": "new target segmented in {s:.2f} s (the others kept)",
    "rerun": "target segmented again from its clicks in {s:.2f} s (the others kept)",
    "predict": "segmented in {s:.2f} s ({encodes} crop(s) encoded so far)",
    "edit": "your edit is kept (the edited targets are locked)",
    "lock": "locked: its voxels stay as they are",
    "unlock": "unlocked: the model's mask is back",
}


def _button(text: str, slot, row: QHBoxLayout, tip: str = "") -> QPushButton:
    button = QPushButton(text)
    button.clicked.connect(lambda _=False: slot())
    button.setToolTip(tip)
    row.addWidget(button)
    return button


class SegmentWidget(QWidget, TargetActions):
    """SAM-Med3D(-MoE) interactive segmentation of the chosen image layer."""

    idle = Signal()  # every queued job has finished and its result is shown

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.layers: ImageLayers | None = None
        self.last_update: Update | None = None
        self.last_saved: list[str] = []
        self.notes: list[str] = []
        self.negative_mode = False
        self._negative: bool | None = None
        self._adopting = False
        self._selected: int | None = None
        self._save_to: tuple[str, bool] | None = None
        self.shortcuts = Shortcuts(
            {
                "toggle": self.toggle_sign,
                "undo": self.undo,
                "reset": self.reset,
                "next": self.next_target,
                "save": self.save_again,
            }
        )
        self._build()
        self._threads = self.model_panel.threads.value()
        self.model_panel.threads.valueChanged.connect(lambda n: setattr(self, "_threads", int(n)))
        self.jobs = Jobs(self._progress, self._show_error, self.idle.emit, lambda: threads.pin(self._threads))
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        # Off the GUI thread first: napari's first labels and points layers import pandas and more (1-2 s),
        # then torch (seconds); the open image is adopted in between.
        self._submit(self._warm_up, lambda _: self._layers_changed())
        self._submit(self._find_options, lambda found: self.model_panel.set_options(*found))

    # ------------------------------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.setMinimumWidth(640)  # the target table's columns without scrolling
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
        self.table.route_chosen.connect(self.set_route)
        self.table.lock_toggled.connect(self.set_locked)
        self.table.itemSelectionChanged.connect(self._selection_changed)
        column.addWidget(self.table)
        buttons = QHBoxLayout()
        self.buttons = {
            "add": _button("Add", self.add_target, buttons, tooltip("next", "start another target")),
            "undo": _button("Undo click", self.undo, buttons, tooltip("undo")),
            "reset": _button("Reset", self.reset, buttons, tooltip("reset")),
            "delete": _button("Delete", self.delete, buttons, "remove the selected target"),
            "lock": _button("Lock", self.toggle_lock, buttons, self.table.TIPS[-1]),
        }
        self.sign_button = _button("", self.toggle_sign, buttons, tooltip("toggle"))
        self.sign_button.setCheckable(True)
        self._sign_changed()
        column.addLayout(buttons)
        hint = QLabel(HINT)
        hint.setWordWrap(True)
        column.addWidget(hint)
        root.addWidget(target_box)
        self.busy_label = QLabel(BUSY)  # static on purpose (see the module docstring)
        self.busy_label.setVisible(False)
        self.status = QLabel("")
        self.busy_indicator = DelayedBusy(self.busy_label, self.status)
        self.note_label = QLabel("")
        self.note_label.setStyleSheet("color: #d9a400")
        self.error_label = QLabel("")
        self.error_label.setStyleSheet("color: #ff6060")
        for w in (self.busy_label, self.status, self.note_label, self.error_label):
            w.setWordWrap(True)
            root.addWidget(w)
        self.export_panel = ExportPanel()
        self.export_panel.save_requested.connect(self._save_dialog)
        self.export_panel.button.setToolTip(tooltip("save", "save the segmentation"))
        root.addWidget(self.export_panel)
        root.addStretch(1)

    def _sign_changed(self) -> None:
        self.sign_button.setChecked(self.negative_mode)
        self.sign_button.setText("Clicks: negative" if self.negative_mode else "Clicks: positive")

    # ------------------------------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self.jobs.busy

    @property
    def message(self) -> str:
        return self.error_label.text()

    def _progress(self, text: str | None) -> None:
        self.busy_indicator.progress(text)

    def _show_error(self, message: str) -> None:
        self.error_label.setText(message)
        if self.layers is not None:  # a refused click or edit: show the clicks the session kept
            self.layers.show_clicks(self.session.targets)
            self.table.show_targets(self.session.targets)

    def _submit(self, work, done) -> None:
        self.error_label.setText("")
        self.busy_indicator.start()
        self.jobs.submit(work, done)

    def event(self, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange:  # docked into napari's window, or taken out of it
            self._bind_keys()
        return super().event(event)

    def _bind_keys(self) -> None:
        """The shortcuts work only while the widget is docked."""
        if self.parent() is None:
            self.shortcuts.unbind_all()
            return
        self.shortcuts.bind(self.viewer)
        if self.layers is not None:
            self.shortcuts.bind(self.layers.points)

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
                self.shortcuts.unbind(old.points)
                old.labels.events.paint.disconnect(self._labels_painted)  # it stays as the user's result
                old.detach()
        except Exception as err:  # a layer that is not a usable volume
            self.error_label.setText(one_line(err))
            return
        finally:
            self._adopting = False
        layers.points.mouse_drag_callbacks.insert(0, self._record_modifiers)
        layers.points.events.data.connect(self._points_changed)
        layers.labels.events.paint.connect(self._labels_painted)
        layers.watch_history(self._labels_history)
        self._bind_keys()
        source = layers.volume.path
        self.export_panel.set_dicom(source is not None and Path(source).is_dir())
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
    def _warm_up(self) -> Generator[str, None, None]:
        yield "loading"
        warm_up_layers()

    def _find_options(self) -> Generator[str, None, tuple[list[str], list[str]]]:
        yield "loading: finding devices and expert plugins"
        return options()

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
        threads.pin(self._threads, load=True)
        predictor, self.notes = load_predictor(choice)
        return predictor

    # ------------------------------------------------------------------------------------------ results
    def _apply(self, update: Update, current: int | None = None) -> None:
        """Show an update (GUI thread; no worker runs now, so the session may be read)."""
        self.last_update = update
        if self.layers is not None:
            self.layers.show_labels(update.labels, update.box)
            self.layers.show_clicks(update.targets)
            self.layers.set_clicks_document(self.session.clicks_document())
        self.table.show_targets(update.targets, current, update.decoders)
        self.note_label.setText("\n".join(self.notes))
        text = STATUS.get(update.path, "")
        self.status.setText(text.format(ms=update.seconds * 1000, s=update.seconds, encodes=update.encodes))

    # ------------------------------------------------------------------------------------------ saving
    def _save_dialog(self) -> None:
        suffix = self.export_panel.suffix
        name = next(n for n, s in FORMATS if s == suffix)
        path, _ = QFileDialog.getSaveFileName(self, "Save segmentation", "", f"{name} (*{suffix})")
        if path:
            path = path if path.lower().endswith(suffix) else path + suffix
            self.save(path, self.export_panel.per_target.isChecked())

    def save_again(self) -> None:
        """Save where the last save went (the first time: ask where)."""
        if self._save_to is None:
            self._save_dialog()
        else:
            self.save(*self._save_to)

    def save(self, path: str, per_target: bool = False) -> None:
        """Write the label map as the layer shows it (the user's edits included) on the source grid, in the
        format the extension names, and ``<name>.clicks.json``; in a worker (``last_saved`` then lists the
        files; errors: one line)."""
        if self.layers is None:
            self.error_label.setText("nothing to save: open an image and click a target first")
            return
        shown = self.last_update.targets if self.last_update is not None else ()
        segments = [(t.value, t.name, f"sammoe {t.expert or 'clicks'}") for t in shown if t.value]
        labels, volume = self.layers.stored.copy(), self.layers.volume
        clicks = self.layers.clicks_document

        def work() -> Generator[str, None, list[str]]:
            yield f"saving {path}"
            return export(path, labels, volume, sorted(segments), clicks, per_target=per_target)

        def done(written: list[str]) -> None:
            self.last_saved = written
            self._save_to = (path, per_target)
            self.status.setText("saved " + ", ".join(written))

        self._submit(work, done)
