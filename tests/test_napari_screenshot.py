"""docs/napari_screenshot.py (the README's picture) runs on a shown viewer under Xvfb: the real canvas shows
the segmented phantom, and the table says which expert segmented what."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "napari_screenshot.py"


def test_screenshot_of_a_segmented_phantom(make_napari_viewer, qtbot, tmp_path):
    from imageio.v3 import imread

    spec = importlib.util.spec_from_file_location("napari_screenshot", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    viewer = make_napari_viewer(show=True)
    out = tmp_path / "napari.png"

    def wait(widget):
        qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)

    result = script.take(viewer, out, wait, tmp_path)
    assert result["message"] == ""
    experts = {t.name: t.expert for t in result["targets"]}
    assert experts["liver"] == "foundation" and experts["spinal_cord"] == "spinal_cord"
    assert all(t.value for t in result["targets"])
    assert out.stat().st_size < 300_000 and imread(out).shape[0] >= 600
    # The canvas rendered the phantom (greys) and the labels (coloured), not the black of a hidden viewer.
    canvas = viewer.screenshot(canvas_only=True)[..., :3].astype(int)
    spread = canvas.max(axis=-1) - canvas.min(axis=-1)
    assert (canvas.mean(axis=-1) > 120).mean() > 0.2 and (spread > 60).mean() > 0.02
