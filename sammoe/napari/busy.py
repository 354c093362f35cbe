"""The widget's busy indicator, shown only when a job lasts longer than a glance.

Under software OpenGL (Xvfb, remote desktops, VMs) every repaint of napari's window composes the whole window
on the CPU, and that competes with the model for the cores: showing and hiding a label around each 10 ms
refinement cost it 10-15 ms. So the label and the job's progress text appear only after ``DELAY_MS``, as
busy cursors do; a refinement or an undo finishes before that and repaints once, with its result.
"""

from __future__ import annotations

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

DELAY_MS = 300


class DelayedBusy:
    """Shows ``label`` (static text) and the latest progress text in ``status`` once work has run for
    ``delay_ms``; ``start`` when work is queued, ``progress`` for each message, ``stop`` when all is done."""

    def __init__(self, label: QLabel, status: QLabel, delay_ms: int = DELAY_MS) -> None:
        self.label, self.status = label, status
        self._text: str | None = None
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self._show)

    def start(self) -> None:
        if self.label.isHidden() and not self._timer.isActive():
            self._timer.start()

    def progress(self, text: str | None) -> None:
        if text is None:
            self.stop()
            return
        self._text = text
        if self.label.isHidden():
            self.start()
        else:
            self.status.setText(text)

    def stop(self) -> None:
        self._timer.stop()
        self._text = None
        self.label.setVisible(False)

    def _show(self) -> None:
        self.label.setVisible(True)
        if self._text is not None:
            self.status.setText(self._text)
