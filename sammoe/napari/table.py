"""The targets table: one row per target, the selected row is the target that clicks go to."""

from __future__ import annotations

from collections.abc import Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QComboBox, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from sammoe.napari.views import ROUTED, TargetView

ROUTED_TEXT = "routed"  # the decoder menu's entry for "the model decides"
_BY = {"routers": "router", "forced": "chosen", "chosen": "chosen"}


def _cell(text: str, editable: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    flags = Qt.ItemFlag.ItemIsSelectable | Qt.ItemFlag.ItemIsEnabled
    item.setFlags(flags | Qt.ItemFlag.ItemIsEditable if editable else flags)
    return item


class TargetTable(QTableWidget):
    """Label value, name (editable), clicks, the decoder chosen for it (a menu), the decoder that segmented
    it, its routing probability, its stability, its volume, and whether its voxels are locked."""

    HEADERS = ("label", "name", "clicks", "decoder", "expert", "confidence", "stability", "ml", "lock")
    TIPS = (
        "value in the label map",
        "double-click to rename",
        "positive+ negative- clicks",
        "routed: the model's gate or routers choose; or choose the decoder for this target alone (it is "
        "segmented again; the saved clicks file records the choice, which sammoe segment --clicks follows)",
        "the decoder that segmented it: foundation or an expert plugin",
        "the gate's (or the expert's router's) probability for that expert",
        "SAM's stability score: how much the mask keeps when the logit threshold moves from -1 to +1 "
        "(1: a sharp, certain boundary). Needs no training; the model's own IoU head is untrained",
        "volume in millilitres (voxels carrying this label x voxel volume)",
        "locked: the label map keeps this target's voxels as they are (your brush and eraser edits); later "
        "clicks on other targets never change them. Painting a target locks it",
    )
    COLUMN = {name: i for i, name in enumerate(HEADERS)}
    renamed = Signal(int, str)
    route_chosen = Signal(int, object)  # target id, decoder name or None (routed)
    lock_toggled = Signal(int, bool)

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
        self.decoders: tuple[str, ...] = ("foundation",)
        self.itemChanged.connect(self._changed)

    def show_targets(
        self, targets: Sequence[TargetView], current: int | None = None, decoders: Sequence[str] = ()
    ) -> None:
        current = self.current_id() if current is None else current
        if decoders:
            self.decoders = tuple(decoders)
        self._filling = True
        try:
            self.setRowCount(len(targets))
            self._ids = [t.id for t in targets]
            for row, t in enumerate(targets):
                self._fill(row, t)
        finally:
            self._filling = False
        if current in self._ids:
            self.selectRow(self._ids.index(current))
        elif self._ids:
            self.selectRow(len(self._ids) - 1)

    def _fill(self, row: int, t: TargetView) -> None:
        by = _BY.get(t.routed_by or "", "gate")
        cells = {
            "label": str(t.value) if t.value else "-",
            "name": t.name,
            "clicks": f"{sum(c.positive for c in t.clicks)}+{sum(not c.positive for c in t.clicks)}-",
            "decoder": "",
            "expert": t.expert or "-",
            "confidence": "-" if t.confidence is None else f"{t.confidence:.2f} {by}",
            "stability": "-" if t.stability is None else f"{t.stability:.2f}",
            "ml": "-" if t.volume_ml is None else f"{t.volume_ml:.2f}",
            "lock": "",
        }
        for col, text in enumerate(cells.values()):
            self.setItem(row, col, _cell(text, editable=col == self.COLUMN["name"]))
        lock = self.item(row, self.COLUMN["lock"])
        if t.value:  # only a target with a mask has voxels to keep
            lock.setFlags(lock.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            lock.setCheckState(Qt.CheckState.Checked if t.locked else Qt.CheckState.Unchecked)
        self._decoder_menu(row, t)

    def _decoder_menu(self, row: int, t: TargetView) -> None:
        """The row's decoder menu; the one already there is kept when it is this target's with the same
        choices (a menu made anew on every update costs GUI time on each click)."""
        choices = [ROUTED_TEXT, *self.decoders]
        if t.route is not ROUTED and t.route not in choices:
            choices.append(t.route)
        menu = self.cellWidget(row, self.COLUMN["decoder"])
        if not (
            isinstance(menu, QComboBox)
            and menu.property("target") == t.id
            and [menu.itemText(i) for i in range(menu.count())] == choices
        ):
            menu = QComboBox()
            menu.addItems(choices)
            menu.setProperty("target", t.id)
            menu.setToolTip(self.TIPS[self.COLUMN["decoder"]])
            menu.currentTextChanged.connect(
                lambda text, id_=t.id: (
                    self._filling or self.route_chosen.emit(id_, None if text == ROUTED_TEXT else text)
                )
            )
            self.setCellWidget(row, self.COLUMN["decoder"], menu)
        menu.setCurrentText(ROUTED_TEXT if t.route is ROUTED else t.route)
        menu.setEnabled(not t.locked)

    def decoder_menu(self, id_: int) -> QComboBox:
        return self.cellWidget(self._ids.index(id_), self.COLUMN["decoder"])

    def current_id(self) -> int | None:
        rows = self.selectionModel().selectedRows() if self.selectionModel() else []
        if not rows or rows[0].row() >= len(self._ids):
            return None
        return self._ids[rows[0].row()]

    def select_id(self, id_: int) -> None:
        if id_ in self._ids:
            self.selectRow(self._ids.index(id_))

    @property
    def ids(self) -> list[int]:
        return list(self._ids)

    def row_text(self, id_: int) -> dict[str, str]:
        """Column name -> text of a target's row (the decoder column: its menu's choice)."""
        row = self._ids.index(id_)
        texts = {name: self.item(row, col).text() for name, col in self.COLUMN.items()}
        texts["decoder"] = self.decoder_menu(id_).currentText()
        texts["lock"] = (
            "locked" if self.item(row, self.COLUMN["lock"]).checkState() == Qt.CheckState.Checked else ""
        )
        return texts

    def _changed(self, item: QTableWidgetItem) -> None:
        if self._filling or item.row() >= len(self._ids):
            return
        id_ = self._ids[item.row()]
        if item.column() == self.COLUMN["name"]:
            self.renamed.emit(id_, item.text())
        elif item.column() == self.COLUMN["lock"]:
            self.lock_toggled.emit(id_, item.checkState() == Qt.CheckState.Checked)
