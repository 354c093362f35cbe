"""Saving from the widget: every target in one label map or one file per target, as NIfTI, a 3D Slicer
.seg.nrrd or (for a DICOM series) a DICOM-SEG, through the writer `sammoe segment --out` uses; and the
per-target decoder menu, whose choice the saved clicks file records."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers.dicom import write_dicom_series
from helpers.gui import dock, organ_centre, settle

from sammoe.data.io import read_image

pytestmark = pytest.mark.gui


def two_targets(widget, qtbot, label) -> np.ndarray:
    for name, organ in (("liver", "liver"), ("spleen", "spleen")):
        widget.add_target(name)
        widget.click(organ_centre(label, organ))
    settle(qtbot, widget)
    data = np.asarray(widget.layers.labels.data).copy()
    assert set(np.unique(data)) == {0, 1, 2} and widget.message == ""
    return data


def test_nifti_seg_nrrd_and_one_file_per_target(make_napari_viewer, qtbot, gui_phantom, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(gui_phantom[0]), plugin="sammoe")
    widget = dock(viewer, qtbot)
    data = two_targets(widget, qtbot, gui_phantom[1])
    formats = widget.export_panel.format
    assert not formats.model().item(formats.findData(".dcm")).isEnabled()  # not a DICOM series
    for name in ("seg.nii.gz", "seg.seg.nrrd"):
        widget.save(str(tmp_path / name))
        settle(qtbot, widget)
        assert widget.last_saved == [str(tmp_path / name), str(tmp_path / "seg.clicks.json")]
        saved = read_image(tmp_path / name)
        assert np.array_equal(np.asarray(saved.array), data) and np.allclose(saved.affine, gui_phantom[2])
    header = (tmp_path / "seg.seg.nrrd").read_bytes()[:4000].decode("latin-1")
    assert "Segment0_Name:=liver" in header and "Segment1_Name:=spleen" in header
    widget.export_panel.choose(".nii.gz", per_target=True)
    widget.save(str(tmp_path / "each.nii.gz"), per_target=True)
    settle(qtbot, widget)
    assert [p.rsplit("/", 1)[-1] for p in widget.last_saved] == [
        "each_liver.nii.gz",
        "each_spleen.nii.gz",
        "each.clicks.json",
    ]
    for value, path in enumerate(widget.last_saved[:2], start=1):
        assert np.array_equal(np.asarray(nib.load(path).dataobj), (data == value).astype(np.uint8))
    widget.save(str(tmp_path / "seg.dcm"))
    settle(qtbot, widget)
    assert "DICOM series" in widget.message and not (tmp_path / "seg.dcm").exists()
    out = tmp_path / "napari.seg.nrrd"
    viewer.layers.selection.active = widget.layers.labels
    viewer.layers.save(str(out), selected=True, plugin="sammoe")  # File > Save Selected Layers
    assert np.array_equal(np.asarray(read_image(out).array), data)


def test_dicom_seg_for_a_dicom_series(make_napari_viewer, qtbot, tmp_path):
    import highdicom as hd
    import SimpleITK as sitk

    from sammoe.data.phantoms import make_phantom_case

    image, label, _ = make_phantom_case(5, shape=(48, 48, 24))
    volume = sitk.GetImageFromArray(np.round(image).transpose(2, 1, 0).astype(np.int16))
    volume.SetSpacing((0.9, 0.9, 2.5))
    tags = {
        "0008|0016": "1.2.840.10008.5.1.4.1.1.2",  # CT image storage
        "0008|0060": "CT",
        "0010|0010": "Phantom^Test",
        "0010|0020": "P1",
        "0020|000d": "1.2.826.0.1.3680043.2.1125.8",
        "0020|0052": "1.2.826.0.1.3680043.2.1125.9",
        "0020|0037": "1\\0\\0\\0\\1\\0",
        "0018|0050": "2.5",
    }
    series = write_dicom_series(tmp_path / "series", volume, tags={k: tags for k in range(24)})
    viewer = make_napari_viewer()
    viewer.open(str(series), plugin="sammoe")
    widget = dock(viewer, qtbot)
    formats = widget.export_panel.format
    assert formats.model().item(formats.findData(".dcm")).isEnabled()
    data = two_targets(widget, qtbot, label)
    widget.save(str(tmp_path / "seg.dcm"))
    settle(qtbot, widget)
    assert widget.message == "" and widget.last_saved[0] == str(tmp_path / "seg.dcm")
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "spleen"]
    import pydicom

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series), reader.GetGDCMSeriesIDs(str(series))[0])
    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    for number in (1, 2):
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], combine_segments=False
        )[..., 0]
        np.testing.assert_array_equal(frames.astype(bool), (data == number).transpose(2, 1, 0))


@pytest.mark.filterwarnings("ignore:the demo model")
def test_the_decoder_menu_reruns_one_target_and_the_clicks_file_records_it(
    make_napari_viewer, qtbot, gui_phantom, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open(str(gui_phantom[0]), plugin="sammoe")
    widget = dock(viewer, qtbot)
    data = two_targets(widget, qtbot, gui_phantom[1])
    liver, spleen = (t.id for t in widget.last_update.targets)
    menu = widget.table.decoder_menu(liver)
    choices = [menu.itemText(i) for i in range(menu.count())]
    assert choices == ["routed", "foundation", "spinal_cord", "textured_lesion"]  # the loaded model's
    menu.setCurrentText("spinal_cord")
    settle(qtbot, widget)
    update = widget.last_update
    assert widget.message == "" and update.path == "rerun"
    assert update.targets[0].expert == "spinal_cord" and update.targets[0].route == "spinal_cord"
    row = widget.table.row_text(liver)
    assert (
        row["decoder"] == "spinal_cord" and row["expert"] == "spinal_cord" and "chosen" in row["confidence"]
    )
    after = np.asarray(widget.layers.labels.data)
    assert np.array_equal(after == 2, data == 2)  # the spleen was not segmented again
    widget.save(str(tmp_path / "seg.nii.gz"))
    settle(qtbot, widget)
    doc = json.loads((tmp_path / "seg.clicks.json").read_text())
    assert doc["targets"][0]["route"] == "spinal_cord" and "route" not in doc["targets"][1]
    from sammoe.cli.segment import main

    argv = [
        "--image",
        str(gui_phantom[0]),
        "--clicks",
        str(tmp_path / "seg.clicks.json"),
        "--checkpoint",
        "demo",
    ]
    assert main([*argv, "--out", str(tmp_path / "cli.nii.gz"), "--quiet"]) == 0  # honours the route
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "cli.nii.gz")).dataobj), after)
    widget.table.decoder_menu(liver).setCurrentText("routed")
    settle(qtbot, widget)
    assert widget.last_update.targets[0].route is None
    assert np.array_equal(np.asarray(widget.layers.labels.data), data)
    assert "route" not in widget.layers.clicks_document["targets"][0]
    assert widget.table.row_text(spleen)["decoder"] == "routed"
