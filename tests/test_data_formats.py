"""NRRD, MetaImage and MGZ read with the same geometry as NIfTI, and refused in one line when broken."""

from __future__ import annotations

import numpy as np
import pytest

from sammoe.data.io import read_image
from sammoe.errors import DataError


def _sitk_image(seed: int = 0):
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    array = rng.normal(100, 30, size=(7, 9, 11)).astype(np.float32)  # SimpleITK order: z, y, x
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 1.1, 2.5))
    image.SetOrigin((-12.0, 30.5, 7.25))
    angle = 0.2  # oblique, so a swapped or transposed direction matrix cannot pass unnoticed
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))
    return image


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_simpleitk_formats_match_the_same_image_written_as_nifti(tmp_path, suffix):
    import SimpleITK as sitk

    image = _sitk_image()
    sitk.WriteImage(image, str(tmp_path / f"img{suffix}"))
    sitk.WriteImage(image, str(tmp_path / "img.nii.gz"))  # SimpleITK converts LPS to RAS for NIfTI itself
    ours, nifti = read_image(tmp_path / f"img{suffix}"), read_image(tmp_path / "img.nii.gz")
    assert ours.shape == nifti.shape == (11, 9, 7)
    np.testing.assert_array_equal(ours.array, nifti.array)
    np.testing.assert_allclose(ours.affine, nifti.affine, atol=1e-5)
    # voxel (1, 2, 3) lies where SimpleITK says, in RAS
    lps = np.asarray(image.TransformIndexToPhysicalPoint((1, 2, 3)))
    ras = ours.affine @ np.array([1, 2, 3, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=1e-5)


def test_mgz_matches_nifti(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(1)
    array = rng.normal(50, 10, size=(10, 8, 6)).astype(np.float32)
    affine = np.array([[-1.0, 0, 0, 90], [0, 0, 1.2, -100], [0, -1.5, 0, 120], [0, 0, 0, 1]])
    nib.save(nib.MGHImage(array, affine), str(tmp_path / "brain.mgz"))
    nib.save(nib.Nifti1Image(array, affine), str(tmp_path / "brain.nii.gz"))
    ours, nifti = read_image(tmp_path / "brain.mgz"), read_image(tmp_path / "brain.nii.gz")
    np.testing.assert_array_equal(ours.array, nifti.array)
    np.testing.assert_allclose(ours.affine, nifti.affine, atol=1e-5)


def test_broken_files_are_one_line_each(tmp_path, monkeypatch):
    import SimpleITK as sitk

    sitk.WriteImage(_sitk_image(), str(tmp_path / "ok.nrrd"))
    data = (tmp_path / "ok.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) - 200])
    with pytest.raises(DataError, match="cut.nrrd: cannot read the voxels"):
        read_image(tmp_path / "cut.nrrd")
    (tmp_path / "junk.mha").write_text("not an image\n")
    with pytest.raises(DataError, match="junk.mha: cannot read the header"):
        read_image(tmp_path / "junk.mha")
    (tmp_path / "junk.mgz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="junk.mgz: cannot read MGH/MGZ"):
        read_image(tmp_path / "junk.mgz")
    rgb = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nrrd"))
    with pytest.raises(DataError, match="component"):
        read_image(tmp_path / "rgb.nrrd")
    monkeypatch.setenv("SAMMOE_MAX_VOXELS", "100")
    with pytest.raises(DataError, match="header claims"):
        read_image(tmp_path / "ok.nrrd")


def test_segment_reads_nrrd_and_writes_on_its_grid(tmp_path, capsys):
    import SimpleITK as sitk

    from sammoe.cli.segment import main
    from sammoe.data.phantoms import make_phantom_case

    image, _, affine = make_phantom_case(3, shape=(48, 48, 32))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    itk = sitk.GetImageFromArray(np.ascontiguousarray(image.transpose(2, 1, 0)))
    itk.SetSpacing(tuple(np.linalg.norm(lps[:3, :3], axis=0)))
    itk.SetOrigin(tuple(lps[:3, 3]))
    itk.SetDirection(tuple((lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)).reshape(-1)))
    sitk.WriteImage(itk, str(tmp_path / "case.nrrd"))
    out = tmp_path / "seg.nii.gz"
    rc = main(
        [
            "--image",
            str(tmp_path / "case.nrrd"),
            "--point",
            "24",
            "24",
            "16",
            "--out",
            str(out),
            "--checkpoint",
            "demo",
            "--experts",
            "none",
            "--quiet",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    written = read_image(out)
    assert written.shape == (48, 48, 32)
    np.testing.assert_allclose(written.affine, affine, atol=1e-4)


def test_segment_writes_a_slicer_segmentation_with_names(tmp_path, capsys):
    import json

    import SimpleITK as sitk

    from sammoe.cli.segment import main
    from sammoe.data.phantoms import make_phantom_case

    image, _, affine = make_phantom_case(4, shape=(48, 48, 32))
    import nibabel as nib

    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "case.nii.gz"))
    clicks = {
        "space": "voxel",
        "targets": [
            {"name": "liver", "points": [[20, 22, 16]]},
            {"name": "kidney_left", "points": [[30, 30, 16]]},
        ],
    }
    (tmp_path / "clicks.json").write_text(json.dumps(clicks))
    base = ["--image", str(tmp_path / "case.nii.gz"), "--clicks", str(tmp_path / "clicks.json")]
    base += ["--checkpoint", "demo", "--experts", "none", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "seg.nii.gz")]) == 0
    assert main([*base, "--out", str(tmp_path / "seg.seg.nrrd")]) == 0, capsys.readouterr().err
    nifti, slicer = read_image(tmp_path / "seg.nii.gz"), read_image(tmp_path / "seg.seg.nrrd")
    np.testing.assert_array_equal(slicer.array, nifti.array)
    np.testing.assert_allclose(slicer.affine, nifti.affine, atol=1e-4)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(tmp_path / "seg.seg.nrrd"))
    reader.ReadImageInformation()
    meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
    assert meta["Segment0_Name"] == "liver" and meta["Segment1_Name"] == "kidney_left"
    assert meta["Segment1_LabelValue"] == "2" and meta["Segment0_Tags"] == "Description:sammoe foundation|"
    assert meta["Segmentation_MasterRepresentation"] == "Binary labelmap"
    from sammoe.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"must end with \.nii, \.nii\.gz, \.seg\.nrrd \(3D Slicer\) or \.dcm"
    ):
        main([*base, "--out", str(tmp_path / "seg.mha")])
