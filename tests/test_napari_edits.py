"""The user's edits are the truth: clicks moved or deleted with napari's point tools re-run their target,
voxels painted or erased on the segmentation layer lock their target and stay through later clicks on other
targets, and the saved label map holds them."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers.gui import dock, organ_centre, settle
from qtpy.QtCore import Qt

from sammoe.data.phantoms import LABELS

pytestmark = pytest.mark.gui


def segment_cli(tmp_path, image, clicks) -> np.ndarray:
    from sammoe.cli.segment import main

    out = tmp_path / "cli.nii.gz"
    argv = ["--image", str(image), "--clicks", str(clicks), "--out", str(out), "--checkpoint", "demo"]
    assert main([*argv, "--quiet"]) == 0
    return np.asarray(nib.load(str(out)).dataobj)


def test_moving_and_deleting_clicks_with_napari_point_tools_rerun_the_target(
    docked_phantom, qtbot, gui_phantom, tmp_path
):
    viewer, widget = docked_phantom
    path, label, _ = gui_phantom
    kidney = organ_centre(label, "kidney_left")
    widget.click(kidney)
    widget.click(kidney + [0, 0, 3], positive=False)
    settle(qtbot, widget)
    points = widget.layers.points
    moved = np.array(points.data)
    moved[0] += [1, 1, 0]
    points.data = moved  # as napari's select tool leaves a dragged point
    settle(qtbot, widget)
    update = widget.last_update
    assert widget.message == "" and update.path == "rerun"
    assert update.targets[0].clicks[0].point == tuple(moved[0]) and update.targets[0].clicks[0].positive
    assert np.array_equal(points.data, moved)  # the point stays where the user left it
    points.selected_data = {1}
    points.remove_selected()  # the Delete key in select mode
    settle(qtbot, widget)
    view = widget.last_update.targets[0]
    assert widget.last_update.path == "rerun" and [c.positive for c in view.clicks] == [True]
    assert len(points.data) == 1
    widget.save(str(tmp_path / "seg.nii.gz"))
    settle(qtbot, widget)
    cli = segment_cli(tmp_path, path, tmp_path / "seg.clicks.json")
    assert cli.any() and np.array_equal(cli, np.asarray(widget.layers.labels.data))
    points.selected_data = {0}
    points.remove_selected()  # its last click: the target has no mask any more
    settle(qtbot, widget)
    assert widget.last_update.targets[0].value == 0 and not np.asarray(widget.layers.labels.data).any()


def test_brush_edits_lock_their_target_survive_other_clicks_and_are_saved(
    docked_phantom, qtbot, gui_phantom, tmp_path
):
    viewer, widget = docked_phantom
    _, label, _ = gui_phantom
    widget.add_target("liver")
    widget.click(organ_centre(label, "liver"))
    settle(qtbot, widget)
    labels = widget.layers.labels
    liver_id = widget.last_update.targets[0].id
    spleen = organ_centre(label, "spleen")
    labels.brush_size = 3
    labels.paint(spleen, 1)  # napari's brush: liver's value painted into the spleen
    settle(qtbot, widget)
    assert widget.last_update.path == "edit" and widget.table.row_text(liver_id)["lock"] == "locked"
    painted = np.asarray(labels.data) == 1
    painted &= label == LABELS["spleen"]
    assert painted.any()
    erased = tuple(np.argwhere(np.asarray(labels.data) == 1)[:25].T)
    labels.data_setitem(erased, 0)  # the eraser
    settle(qtbot, widget)
    widget.add_target("spleen")
    widget.click(spleen)
    settle(qtbot, widget)
    data = np.asarray(labels.data)
    assert widget.last_update.targets[1].value == 2 and (data == 2).any()
    assert (data[painted] == 1).all() and (data[erased] == 0).all()  # the spleen's click left them alone
    widget.click(organ_centre(label, "liver"), target=liver_id)
    settle(qtbot, widget)
    assert "locked" in widget.message and "unlock" in widget.message
    points = widget.layers.points
    before = np.array(points.data)
    points.data = before + [[1, 0, 0], [0, 0, 0]]  # the liver's click cannot move either: it comes back
    settle(qtbot, widget)
    assert "locked" in widget.message and np.array_equal(points.data, before)
    widget.save(str(tmp_path / "edited.nii.gz"))
    settle(qtbot, widget)
    saved = np.asarray(nib.load(str(tmp_path / "edited.nii.gz")).dataobj)
    assert np.array_equal(saved, data)  # the user's edits are in the saved label map
    lock = widget.table.item(0, widget.table.COLUMN["lock"])
    lock.setCheckState(Qt.CheckState.Unchecked)  # the lock box in the table
    settle(qtbot, widget)
    assert widget.last_update.path == "unlock" and widget.table.row_text(liver_id)["lock"] == ""
    assert not (np.asarray(labels.data)[painted] == 1).all()  # the model's mask is back
    widget.table.select_id(liver_id)
    widget.buttons["lock"].click()  # locks it as it is now
    settle(qtbot, widget)
    assert widget.last_update.path == "lock" and widget.table.row_text(liver_id)["lock"] == "locked"


def test_edits_on_a_grid_shown_transposed_land_on_the_stored_voxels(make_napari_viewer, qtbot, tmp_path):
    """A scan stored as P, S, L is shown transposed (nearest RAS): painted voxels and moved clicks are mapped
    back to the stored axes the session and the saved files use."""
    from sammoe.data.phantoms import make_phantom_case

    image, label, _ = make_phantom_case(2, shape=(48, 48, 32))
    permuted = np.array([[0, 0, -2.0, 40], [-2.0, 0, 0, 15], [0, 2.0, 0, -20], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(image, permuted), str(tmp_path / "p.nii.gz"))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "p.nii.gz"), plugin="sammoe")
    widget = dock(viewer, qtbot)
    assert widget.layers.display.perm != (0, 1, 2)
    widget.click(organ_centre(label, "liver"))
    settle(qtbot, widget)
    shown = np.asarray(widget.layers.labels.data)
    spot = tuple(np.array([[5, 6, 7], [5, 6, 8]]).T)  # layer (shown) indices
    widget.layers.labels.data_setitem(spot, 1)
    settle(qtbot, widget)
    assert widget.last_update.path == "edit" and np.array_equal(widget.session.labels, widget.layers.stored)
    assert (shown[spot] == 1).all()
    points = widget.layers.points
    moved = np.array(points.data)
    moved[0] += [1, 0, 0]
    widget.set_locked(widget.last_update.targets[0].id, False)  # a locked target's clicks cannot move
    settle(qtbot, widget)
    points.data = moved
    settle(qtbot, widget)
    click = widget.last_update.targets[0].clicks[0].point
    assert np.allclose(widget.layers.display.to_layer(np.array([click]))[0], moved[0])


def test_napari_undo_and_redo_of_a_brush_stroke_are_kept_through_later_clicks(
    docked_phantom, qtbot, gui_phantom
):
    """napari's Ctrl+Z on the segmentation layer writes the layer without a paint event; the session must
    follow it, or the next click on another target draws the undone stroke again."""
    viewer, widget = docked_phantom
    _, label, _ = gui_phantom
    widget.click(organ_centre(label, "liver"))
    settle(qtbot, widget)
    labels = widget.layers.labels
    spleen = organ_centre(label, "spleen")
    labels.brush_size = 3
    labels.paint(spleen, 1)  # the liver's value brushed into the spleen
    settle(qtbot, widget)
    painted = (np.asarray(labels.data) == 1) & (label == LABELS["spleen"])
    assert painted.any()
    labels.undo()  # Ctrl+Z with the segmentation layer active
    settle(qtbot, widget)
    assert not (np.asarray(labels.data)[painted] == 1).any()
    assert np.array_equal(widget.session.labels, widget.layers.stored)
    widget.add_target("kidney")
    widget.click(organ_centre(label, "kidney_left"))
    settle(qtbot, widget)
    data = np.asarray(labels.data)
    assert (data == 2).any() and not (data[painted] == 1).any()  # the undone stroke stays undone
    labels.redo()  # Ctrl+Shift+Z: the stroke is back, and kept
    settle(qtbot, widget)
    widget.click(organ_centre(label, "kidney_left") + [1, 0, 0])
    settle(qtbot, widget)
    assert (np.asarray(labels.data)[painted] == 1).all()
