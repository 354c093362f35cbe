"""The widget's panels that hold settings: which model to run (and on how many threads), and how to save."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QWidget,
)

from sammoe.napari.export import FORMATS
from sammoe.napari.models import ModelChoice, model_options
from sammoe.napari.threads import available_cores, default_threads

FILE = "__file__"  # the model menu's "checkpoint file" entry
THREADS_TIP = (
    "threads the model may use (torch's intra-op threads): one core fewer than this machine has leaves "
    "napari a core to draw on, so neither waits for the other (SAMMOE_NAPARI_THREADS sets the default)"
)


class ModelPanel(QWidget):
    """Model (demo / turbo / a checkpoint file), installed experts, device, threads, and a Load button. The
    experts and devices are filled in by a worker (``set_options``): finding them imports torch and runs
    plugin discovery, seconds that must not freeze napari when the widget docks."""

    load_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.model = QComboBox()
        for label, value in model_options():
            self.model.addItem(label, value)
        self.model.addItem("checkpoint file...", FILE)
        form.addRow("model", self.model)
        row = QHBoxLayout()
        self.path = QLineEdit()
        self.path.setPlaceholderText(".pth / .safetensors (SAM-Med3D weights)")
        browse = QPushButton("...")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        row.addWidget(self.path)
        row.addWidget(browse)
        form.addRow("file", row)
        self.experts = QListWidget()
        self.experts.setMaximumHeight(56)
        form.addRow("experts", self.experts)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu"])
        form.addRow("device", self.device)
        self.threads = QSpinBox()
        self.threads.setRange(1, max(available_cores(), default_threads()))
        self.threads.setValue(default_threads())
        self.threads.setToolTip(THREADS_TIP)
        form.addRow("threads", self.threads)
        load = QPushButton("Load model")
        load.clicked.connect(self.load_requested.emit)
        form.addRow(load)
        self.path.textEdited.connect(lambda _: self._select(FILE))

    def set_options(self, devices: Sequence[str], experts: Sequence[str]) -> None:
        """The devices and installed experts a worker found (the current choices are kept)."""
        device = self.device.currentText()
        self.device.clear()
        self.device.addItems(list(devices))
        self.device.setCurrentText(device if device in devices else "auto")
        if self.experts.count():
            return  # the user may have unchecked some already
        for name in experts:
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.experts.addItem(item)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "SAM-Med3D checkpoint", "", "Weights (*.pth *.pt *.safetensors *.ckpt)"
        )
        if path:
            self.set_checkpoint_file(path)

    def _select(self, value: str) -> None:
        index = self.model.findData(value)
        if index >= 0:
            self.model.setCurrentIndex(index)

    def set_checkpoint_file(self, path: str) -> None:
        self.path.setText(str(path))
        self._select(FILE)

    def choice(self) -> ModelChoice:
        value = self.model.currentData()
        checkpoint = self.path.text().strip() if value == FILE else value
        items = [self.experts.item(i) for i in range(self.experts.count())]
        checked = tuple(i.text() for i in items if i.checkState() == Qt.CheckState.Checked)
        # Every installed expert checked: let loading skip an incompatible one with a note instead of failing.
        experts = None if len(checked) == len(items) else checked
        return ModelChoice(checkpoint or "", experts, self.device.currentText())


class ExportPanel(QWidget):
    """Format (NIfTI, 3D Slicer, DICOM-SEG for a DICOM series), one label map or one file per target, Save."""

    save_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.format = QComboBox()
        for name, suffix in FORMATS:
            self.format.addItem(f"{name} ({suffix})", suffix)
        self.format.setToolTip("written by the same writer as sammoe segment --out, on the scan's own grid")
        self.per_target = QCheckBox("one file per target")
        self.per_target.setToolTip("each target in its own file (value 1), named <file>_<target>")
        self.button = QPushButton("Save segmentation...")
        self.button.clicked.connect(self.save_requested.emit)
        row.addWidget(self.format, 1)
        row.addWidget(self.per_target)
        row.addWidget(self.button)
        self.set_dicom(False)

    def set_dicom(self, available: bool) -> None:
        """DICOM-SEG only for an image read from a DICOM series (its slices are referenced)."""
        item = self.format.model().item(self.format.findData(".dcm"))
        item.setEnabled(available)
        item.setToolTip("" if available else "only for an image read from a DICOM series folder")
        if not available and self.suffix == ".dcm":
            self.format.setCurrentIndex(0)

    @property
    def suffix(self) -> str:
        return self.format.currentData()

    def choose(self, suffix: str, per_target: bool = False) -> None:
        self.format.setCurrentIndex(max(0, self.format.findData(suffix)))
        self.per_target.setChecked(per_target)
