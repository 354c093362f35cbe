"""DICOM-SEG output for a DICOM series input: the same voxels as the NIfTI output, one named segment per
target referencing the source slices; refused early where it cannot work."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("highdicom")


def _ct_series(folder, image: np.ndarray, spacing=(0.9, 0.9, 2.5), origin=(-40.0, -30.0, 10.0)):
    """A CT series as a scanner writes one (study, frame of reference, orientation, thickness per slice)."""
    import SimpleITK as sitk

    volume = sitk.GetImageFromArray(image.transpose(2, 1, 0).astype(np.int16))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    folder.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(volume.GetSize()[2]):
        sl = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0060": "CT",
            "0010|0010": "Phantom^Test",
            "0010|0020": "P1",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.8",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.7",
            "0020|0052": "1.2.826.0.1.3680043.2.1125.9",
            "0020|0013": str(k + 1),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": "\\".join(str(v) for v in position),
            "0018|0050": str(spacing[2]),
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def test_dicom_seg_matches_the_nifti_output_and_names_its_segments(tmp_path, capsys):
    import highdicom as hd

    from sammoe.cli.segment import main
    from sammoe.data.io import read_image
    from sammoe.data.phantoms import LABELS, make_phantom_case

    image, truth, _ = make_phantom_case(5, shape=(48, 48, 24))
    series = _ct_series(tmp_path / "series", np.round(image))

    def inside(name):  # a voxel deep inside the organ (the median of its voxels, snapped onto it)
        voxels = np.argwhere(truth == LABELS[name])
        return voxels[np.argmin(np.abs(voxels - np.median(voxels, 0)).sum(1))].tolist()

    clicks = {
        "space": "voxel",
        "targets": [
            {"name": "liver", "points": [inside("liver")]},
            {"name": "spleen", "points": [inside("spleen")]},
        ],
    }
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    base = ["--image", str(series), "--clicks", str(tmp_path / "clicks.json"), "--checkpoint", "demo"]
    base += ["--experts", "none", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "seg.nii.gz")]) == 0
    assert main([*base, "--out", str(tmp_path / "seg.dcm")]) == 0, capsys.readouterr().err
    labels = read_image(tmp_path / "seg.nii.gz").array
    seg = hd.seg.segread(str(tmp_path / "seg.dcm"))
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["liver", "spleen"]
    assert seg.SegmentSequence[0].SegmentDescription == "sammoe foundation"
    assert seg.SeriesDescription.endswith("(research use only)")
    import pydicom
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series), reader.GetGDCMSeriesIDs(str(series))[0])
    uids = [
        pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files
    ]  # the slices in stack order
    for number in (1, 2):
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, segment_numbers=[number], combine_segments=False
        )[..., 0]
        expected = (labels == number).transpose(2, 1, 0)  # slices, rows (y), columns (x)
        assert expected.any()
        np.testing.assert_array_equal(frames.astype(bool), expected)


def test_dicom_seg_is_refused_early_for_a_file_input(tmp_path):
    import nibabel as nib

    from sammoe.cli.segment import main
    from sammoe.data.phantoms import make_phantom_case
    from sammoe.errors import ConfigError

    image, _, affine = make_phantom_case(6, shape=(32, 32, 16))
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "case.nii.gz"))
    with pytest.raises(ConfigError, match="references the slices of a DICOM series"):
        main(
            [
                "--image",
                str(tmp_path / "case.nii.gz"),
                "--point",
                "16",
                "16",
                "8",
                "--checkpoint",
                "demo",
                "--out",
                str(tmp_path / "seg.dcm"),
            ]
        )
