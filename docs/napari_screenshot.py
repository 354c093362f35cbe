"""The README's picture of the napari plugin: a phantom segmented by clicks, taken from the real canvas.

    xvfb-run -a -s "-screen 0 1700x1000x24" python docs/napari_screenshot.py        # writes docs/napari.png

Five targets are clicked once each in one axial slice through the widget's own entry point (what a canvas
click calls); the demo model routes the spinal cord and the textured lesion to their experts, and the
widget's table says so. The view is axial, radiological (patient right on the left), in true millimetres.
``tests/test_napari_screenshot.py`` runs ``take`` on a shown viewer, so this script cannot rot.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "napari.png"
TARGETS = ("liver", "spleen", "kidney_left", "spinal_cord", "textured_lesion")


def _slice_and_clicks(label: np.ndarray) -> tuple[int, dict[str, np.ndarray]]:
    """The axial slice showing most of the targets, and in it each target's voxel nearest its in-plane
    centre."""
    from sammoe.data.phantoms import LABELS

    present = np.stack([(label == LABELS[n]).any(axis=(0, 1)) for n in TARGETS])  # (targets, z)
    area = (label > 0).sum(axis=(0, 1))
    z = int(np.lexsort((area, present.sum(0)))[-1])
    clicks = {}
    for name in TARGETS:
        inside = np.argwhere(label[:, :, z] == LABELS[name])
        if len(inside):
            nearest = inside[np.argmin(((inside - inside.mean(0)) ** 2).sum(1))]
            clicks[name] = np.array([nearest[0], nearest[1], z], dtype=np.float64)
    return z, clicks


def take(viewer, out: Path, wait: Callable[[object], None], folder: Path) -> dict:
    """Open a phantom in ``viewer`` (shown), click every target, save a screenshot of the whole window."""
    import nibabel as nib

    from sammoe.data.phantoms import make_phantom_case

    image, label, affine = make_phantom_case(0)
    path = folder / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    viewer.window.resize(1640, 900)
    viewer.open(str(path), plugin="sammoe")
    _, widget = viewer.window.add_plugin_dock_widget("sammoe", "Segment with clicks")
    wait(widget)
    z, clicks = _slice_and_clicks(label)
    for name, voxel in clicks.items():
        widget.add_target(name)
        widget.click(voxel)
        wait(widget)
    world_z = float(widget.layers.image.data_to_world(np.array([0.0, 0.0, z]))[2])
    viewer.dims.set_point(2, world_z)
    overlays = viewer.canvas.overlays
    overlays.scale_bar.visible = True
    overlays.text.visible = True
    overlays.text.text = f"axial, z = {world_z:.1f} mm (radiological: patient right on the left)"
    overlays.text.font_size = 11
    viewer.reset_view()
    wait(widget)
    viewer.screenshot(str(out), canvas_only=False)
    return {"targets": widget.last_update.targets, "message": widget.message, "slice": z}


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    def wait(widget) -> None:
        deadline = time.monotonic() + 120
        while widget.busy and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.01)
        QApplication.processEvents()

    viewer = napari.Viewer(show=True)
    try:
        with tempfile.TemporaryDirectory() as folder:
            result = take(viewer, OUT, wait, Path(folder))
    finally:
        viewer.close()
    for t in result["targets"]:
        print(f"{t.name}: label {t.value}, expert {t.expert}, {t.volume_ml} ml")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
