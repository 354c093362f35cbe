"""When the napari tests can run: napari + pytest-qt installed and a real X display (pytest-xvfb starts
Xvfb when the binary exists; napari cannot render with Qt's offscreen platform). Otherwise the tests marked
`gui` skip and say why (tests/conftest.py asks `viewer_unavailable()`)."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys

_QT_PROBE = "from qtpy.QtWidgets import QApplication; QApplication([])"


@functools.cache
def viewer_unavailable() -> str | None:
    for module, package in (("napari", "sammoe[napari]"), ("pytestqt", "pytest-qt"), ("npe2", "npe2")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install '{package}')"
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen":
        return "QT_QPA_PLATFORM=offscreen: napari crashes without a GL context; unset it and use Xvfb"
    if not os.environ.get("DISPLAY"):
        return "no X display: install Xvfb (apt-get install xvfb, see .ci/run) so pytest-xvfb starts one"
    # Missing system libraries make Qt abort the whole process; find out in a child process first.
    probe = subprocess.run([sys.executable, "-c", _QT_PROBE], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return f"Qt cannot start on DISPLAY={os.environ['DISPLAY']} ({last}); see the apt-get line in .ci/run"
    return None


GUI_PACKAGES = ("napari", "qtpy", "PyQt6", "PyQt5", "vispy")


def gui_loaded_by(imports: str) -> subprocess.CompletedProcess:
    """Run ``import <imports>`` in a fresh interpreter that fails if any GUI package got loaded with it."""
    code = (
        f"import sys, {imports}; "
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_PACKAGES!r}); "
        "assert not bad, bad"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def mouse_click(viewer, layer, voxel, modifiers=()) -> None:
    """Scroll to the slice through ``voxel`` (as a user would), then click there on ``layer``."""
    import numpy as np

    from sammoe.napari.testing import simulate_click

    world = layer.data_to_world(np.asarray(voxel, dtype=np.float64))
    for axis in viewer.dims.not_displayed:
        viewer.dims.set_point(axis, float(world[axis]))
    simulate_click(viewer, layer, voxel, modifiers)


WIDGET = ("sammoe", "Segment with clicks")
WAIT_MS = 60_000


def settle(qtbot, widget) -> None:
    """Wait until every queued job of the widget has run and its result is shown."""
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def dock(viewer, qtbot):
    """Dock the plugin's widget and wait until it is ready (devices and experts found, image adopted)."""
    _, widget = viewer.window.add_plugin_dock_widget(*WIDGET)
    settle(qtbot, widget)
    return widget


def phantom_nifti(folder, seed: int = 5, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0)):
    """A phantom saved as NIfTI: (path, label, affine)."""
    import nibabel as nib

    from sammoe.data.phantoms import make_phantom_case

    image, label, affine = make_phantom_case(seed, shape=shape, spacing=spacing)
    path = folder / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return path, label, affine


def organ_centre(label, name):
    import numpy as np

    from sammoe.data.phantoms import LABELS

    return np.argwhere(label == LABELS[name]).mean(0).round()
