"""The napari plugin in a real (hidden) viewer under Xvfb: reader, widget, simulated mouse clicks, writer.
The label map must equal, voxel for voxel, what `sammoe segment` writes for the clicks the widget saved."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers.gui import mouse_click, settle
from helpers.gui import organ_centre as centre

pytestmark = pytest.mark.gui


def segment_cli(tmp_path, image, clicks) -> np.ndarray:
    from sammoe.cli.segment import main

    out = tmp_path / "cli.nii.gz"
    argv = ["--image", str(image), "--clicks", str(clicks), "--out", str(out), "--checkpoint", "demo"]
    assert main([*argv, "--quiet"]) == 0
    return np.asarray(nib.load(str(out)).dataobj)


def test_clicks_from_the_api_and_the_mouse_equal_sammoe_segment(docked_phantom, qtbot, gui_phantom, tmp_path):
    viewer, widget = docked_phantom
    path, label, affine = gui_phantom
    image = viewer.layers["phantom"]
    assert np.allclose(image.affine.affine_matrix, affine) and widget.layers.image is image
    messages = []
    widget.jobs._on_progress = lambda text: (messages.append(text), widget._progress(text))
    kidney = centre(label, "kidney_left")
    widget.click(kidney)
    settle(qtbot, widget)
    assert any(m and "first click on this image" in m for m in messages)  # progress while encoding
    assert widget.message == "" and widget.last_update.path == "predict"
    points = widget.layers.points
    assert viewer.layers.selection.active.name == points.name  # the widget holds napari's proxies of layers
    assert points.mode == "add"
    mouse_click(viewer, points, kidney + [1, 1, 0])  # a positive refinement click on the canvas
    settle(qtbot, widget)
    assert widget.last_update.path == "refine" and widget.last_update.encodes == 1
    mouse_click(viewer, points, kidney + [0, 0, 3], modifiers=["Shift"])  # negative
    settle(qtbot, widget)
    view = widget.last_update.targets[0]
    assert [c.positive for c in view.clicks] == [True, True, False] and widget.last_update.path == "refine"
    assert np.allclose(points.face_color[2][:3], (0.95, 0.15, 0.15))
    row = widget.table.row_text(view.id)
    assert (
        row["label"] == "1"
        and row["expert"] == view.expert
        and row["decoder"] == "routed"
        and row["confidence"].endswith("router")  # the shipped model's experts route with their own routers
        and float(row["ml"]) == pytest.approx(view.volume_ml, abs=0.01)
    )
    assert "model IoU" not in widget.table.HEADERS  # untrained: a number that never moves is noise
    widget.save(str(tmp_path / "seg.nii.gz"))
    settle(qtbot, widget)
    written = widget.last_saved
    assert [p.rsplit("/", 1)[-1] for p in written] == ["seg.nii.gz", "seg.clicks.json"]
    saved = nib.load(written[0])
    assert np.allclose(saved.affine, affine)
    cli = segment_cli(tmp_path, path, written[1])
    assert cli.any() and np.array_equal(cli, np.asarray(widget.layers.labels.data))
    assert np.array_equal(cli, np.asarray(saved.dataobj))


def test_two_targets_undo_reset_and_delete(docked_phantom, qtbot, gui_phantom, tmp_path):
    viewer, widget = docked_phantom
    path, label, _ = gui_phantom
    widget.add_target("liver")
    settle(qtbot, widget)
    widget.click(centre(label, "liver"))
    widget.click(centre(label, "liver") + [0, 4, 0], positive=False)
    widget.add_target("spleen")
    settle(qtbot, widget)
    mouse_click(viewer, widget.layers.points, centre(label, "spleen"))
    settle(qtbot, widget)
    assert [(t.name, t.value) for t in widget.last_update.targets] == [("liver", 1), ("spleen", 2)]
    widget.table.item(1, 1).setText("splenic")  # a rename typed into the table
    settle(qtbot, widget)
    assert [t.name for t in widget.last_update.targets] == ["liver", "splenic"]
    assert set(np.unique(widget.layers.labels.data)) == {0, 1, 2}
    widget.table.selectRow(0)
    widget.undo()  # the liver's negative click
    settle(qtbot, widget)
    assert len(widget.last_update.targets[0].clicks) == 1 and widget.last_update.path == "undo"
    assert len(widget.layers.points.data) == 2
    clicks = tmp_path / "seg.clicks.json"
    widget.save(str(tmp_path / "seg.nii.gz"))
    settle(qtbot, widget)
    assert json.loads(clicks.read_text())["targets"][0]["labels"] == [1]
    assert np.array_equal(segment_cli(tmp_path, path, clicks), np.asarray(widget.layers.labels.data))
    widget.reset()
    settle(qtbot, widget)
    assert set(np.unique(widget.layers.labels.data)) == {0, 1}  # spleen is value 1 now, as in the clicks file
    widget.table.selectRow(0)
    widget.delete()
    settle(qtbot, widget)
    assert [t.name for t in widget.last_update.targets] == ["splenic"]


def test_bad_checkpoint_unreadable_file_and_refused_click_show_one_line(
    docked_phantom, qtbot, gui_phantom, tmp_path
):
    viewer, widget = docked_phantom
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a checkpoint")
    widget.model_panel.set_checkpoint_file(str(bad))
    widget.load_model()
    settle(qtbot, widget)
    assert str(bad) in widget.message and "\n" not in widget.message and "Traceback" not in widget.message
    broken = tmp_path / "scan.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    widget.open_image(str(broken))
    settle(qtbot, widget)
    assert (
        str(broken) in widget.message and "cannot read NIfTI" in widget.message and "\n" not in widget.message
    )
    widget.model_panel.model.setCurrentIndex(0)  # back to the demo model
    widget.click([500, 0, 0])
    settle(qtbot, widget)
    assert "outside the image" in widget.message and len(widget.layers.points.data) == 0
    second = tmp_path / "second.nii.gz"
    second.write_bytes(gui_phantom[0].read_bytes())
    widget.open_image(str(second))  # docked_phantom from the widget: segmented from now on
    settle(qtbot, widget)
    assert widget.message == "" and widget.layers.image.name == "second"
    names = [layer.name for layer in viewer.layers]
    assert "phantom segmentation" in names and "phantom clicks" not in names and "second clicks" in names


def test_napari_save_uses_the_writer_and_never_replaces_the_image(
    docked_phantom, qtbot, gui_phantom, tmp_path
):
    viewer, widget = docked_phantom
    path, label, affine = gui_phantom
    widget.click(centre(label, "kidney_right"))
    settle(qtbot, widget)
    labels = widget.layers.labels
    viewer.layers.selection.active = labels
    out = tmp_path / "napari_save.nii.gz"
    viewer.layers.save(str(out), selected=True, plugin="sammoe")
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj), np.asarray(labels.data))
    assert (tmp_path / "napari_save.clicks.json").is_file()
    before = path.read_bytes()
    widget.save(str(path))
    settle(qtbot, widget)
    assert "would replace the input" in widget.message and path.read_bytes() == before
