"""The widget's two panels: which model to run, and the list of targets with their results."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QWidget,
)

from sammoe.napari.models import ModelChoice, devices, installed_experts, model_options
from sammoe.napari.session import TargetView

FILE = "__file__"  # the model menu's "checkpoint file" entry


class ModelPanel(QWidget):
    """Model (demo / turbo / a checkpoint file), installed experts, device, and a Load button."""

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
        for name in installed_experts():
            item = QListWidgetItem(name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked)
            self.experts.addItem(item)
        form.addRow("experts", self.experts)
        self.device = QComboBox()
        self.device.addItems(devices())
        form.addRow("device", self.device)
        load = QPushButton("Load model")
        load.clicked.connect(self.load_requested.emit)
        form.addRow(load)
        self.path.textEdited.connect(lambda _: self._select(FILE))

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


def _cell(text: str, editable: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
    item.setFlags(flags | Qt.ItemFlag.ItemIsEditable if editable else flags)
    return item


class TargetTable(QTableWidget):
    """One row per target: label value, name (editable), clicks, expert, its routing confidence, the model's
    own IoU estimate and the volume in ml. The selected row is the target that clicks go to."""

    HEADERS = ("label", "name", "clicks", "expert", "confidence", "model IoU", "ml")
    TIPS = (
        "value in the label map",
        "double-click to rename",
        "positive+ negative- clicks",
        "the decoder that segmented it: foundation or an expert plugin",
        "the gate's (or the expert's router's) probability for that expert",
        "the model's own estimate of its IoU (its IoU head), not a measurement",
        "volume in millilitres (voxels carrying this label x voxel volume)",
    )
    renamed = Signal(int, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(self.HEADERS)
        for col, tip in enumerate(self.TIPS):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)
        self._ids: list[int] = []
        self._filling = False
        self.itemChanged.connect(self._changed)

    def show_targets(self, targets: Sequence[TargetView], current: int | None = None) -> None:
        current = self.current_id() if current is None else current
        self._filling = True
        try:
            self.setRowCount(len(targets))
            self._ids = [t.id for t in targets]
            for row, t in enumerate(targets):
                by = {"routers": "router", "forced": "forced"}.get(t.routed_by or "", "gate")
                cells = (
                    str(t.value) if t.value else "-",
                    t.name,
                    f"{sum(c.positive for c in t.clicks)}+{sum(not c.positive for c in t.clicks)}-",
                    t.expert or "-",
                    "-" if t.confidence is None else f"{t.confidence:.2f} {by}",
                    "-" if t.predicted_iou is None else f"{t.predicted_iou:.2f}",
                    "-" if t.volume_ml is None else f"{t.volume_ml:.2f}",
                )
                for col, text in enumerate(cells):
                    self.setItem(row, col, _cell(text, editable=col == 1))
        finally:
            self._filling = False
        if current in self._ids:
            self.selectRow(self._ids.index(current))
        elif self._ids:
            self.selectRow(len(self._ids) - 1)

    def current_id(self) -> int | None:
        rows = self.selectionModel().selectedRows() if self.selectionModel() else []
        if not rows or rows[0].row() >= len(self._ids):
            return None
        return self._ids[rows[0].row()]

    def row_text(self, id_: int) -> list[str]:
        row = self._ids.index(id_)
        return [self.item(row, col).text() for col in range(self.columnCount())]

    def _changed(self, item: QTableWidgetItem) -> None:
        if not self._filling and item.column() == 1 and item.row() < len(self._ids):
            self.renamed.emit(self._ids[item.row()], item.text())
