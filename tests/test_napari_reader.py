"""The plugin's reader and writer (no viewer needed): layers on the stored voxel axes with the full affine,
label maps written back on the source grid, and the source image never replaced."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from helpers.dicom import write_dicom_series

from sammoe.data.io import read_image
from sammoe.data.phantoms import make_phantom_case
from sammoe.errors import DataError
from sammoe.napari.reader import get_reader
from sammoe.napari.writer import clicks_path, write_labels

PERMUTED = np.array([[0, 0, -2.0, 40], [-0.8, 0, 0, 15], [0, 1.2, 0, -20], [0, 0, 0, 1]])  # P, S, L axes


def read(path):
    reader = get_reader(str(path))
    assert reader is not None, path
    return reader(str(path))[0]


def test_nifti_phantom_is_an_image_on_voxel_axes_with_the_full_affine(tmp_path):
    image, _, affine = make_phantom_case(1, shape=(48, 40, 24), spacing=(1.5, 1.5, 2.5), lps=True)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "ct.nii.gz"))
    data, kwargs, kind = read(tmp_path / "ct.nii.gz")
    assert kind == "image" and kwargs["name"] == "ct" and kwargs["units"] == "mm"
    assert data.shape == image.shape and np.array_equal(data, image)
    assert np.allclose(kwargs["affine"], affine)  # an LPS-stored grid: flips stay in the affine
    low, high = kwargs["contrast_limits"]
    assert image.min() <= low < high <= image.max()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder without DICOM files
    assert get_reader([str(tmp_path / "ct.nii.gz")] * 2) is None


def test_permuted_axes_are_shown_nearest_ras_and_mapped_back_exactly(tmp_path):
    rng = np.random.default_rng(0)
    nib.save(
        nib.Nifti1Image(rng.normal(size=(20, 15, 12)).astype(np.float32), PERMUTED), str(tmp_path / "p.nii")
    )
    data, kwargs, _ = read(tmp_path / "p.nii")
    display = kwargs["metadata"]["sammoe"]["display"]
    assert data.shape == (12, 20, 15) and display.perm == (2, 0, 1)
    voxel = np.array([[7.0, 3.0, 9.0]])
    shown = display.to_layer(voxel)
    assert np.array_equal(display.to_stored(shown), voxel)
    world = kwargs["affine"][:3, :3] @ shown[0] + kwargs["affine"][:3, 3]
    assert np.allclose(world, PERMUTED[:3, :3] @ voxel[0] + PERMUTED[:3, 3])
    assert np.all(np.abs(np.diag(kwargs["affine"][:3, :3])) > 0)  # nothing permuted left for napari


def test_dicom_folder_is_read_like_sammoe_segment_reads_it(tmp_path):
    import SimpleITK as sitk

    array = np.random.default_rng(1).normal(100, 20, size=(6, 20, 24)).astype(np.int16)  # z, y, x
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.8, 3.0))
    folder = write_dicom_series(tmp_path / "series", image)
    data, kwargs, _ = read(folder)
    volume = read_image(folder)
    assert np.array_equal(data, volume.array) and np.allclose(kwargs["affine"], volume.affine)


def test_nrrd_and_mha_are_read_like_sammoe_segment_reads_them(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.random.default_rng(3).normal(size=(8, 12, 10)).astype(np.float32))
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((10.0, -5.0, 3.0))
    for name in ("scan.nrrd", "scan.mha"):
        sitk.WriteImage(image, str(tmp_path / name))
        data, kwargs, _ = read(tmp_path / name)
        volume = read_image(tmp_path / name)
        assert kwargs["name"] == "scan" and np.array_equal(data, volume.array)
        assert np.allclose(kwargs["affine"], volume.affine)


def test_writer_puts_labels_on_the_source_grid_and_never_replaces_the_image(tmp_path):
    rng = np.random.default_rng(2)
    source = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(20, 15, 12)).astype(np.float32), PERMUTED), str(source))
    _, kwargs, _ = read(source)
    stored = np.zeros((20, 15, 12), dtype=np.uint8)
    stored[3:9, 2:5, 1:4] = 2
    meta = {
        "metadata": {"sammoe": {**kwargs["metadata"]["sammoe"], "clicks": {"space": "voxel", "targets": []}}}
    }
    shown = kwargs["metadata"]["sammoe"]["display"].view(stored)
    written = write_labels(str(tmp_path / "seg.nii.gz"), shown, meta)
    assert written == [str(tmp_path / "seg.nii.gz"), str(tmp_path / "seg.clicks.json")]
    saved = nib.load(written[0])
    assert np.array_equal(np.asarray(saved.dataobj), stored) and np.allclose(saved.affine, PERMUTED)
    assert json.loads(clicks_path(written[0]).read_text())["space"] == "voxel"
    with pytest.raises(DataError, match="would replace the input"):
        write_labels(str(source), shown, meta)
    with pytest.raises(DataError, match=r"\.nii\.gz, \.nii, \.seg\.nrrd or \.dcm"):
        write_labels(str(tmp_path / "seg.png"), shown, meta)
    # A labels layer made elsewhere: its own affine, no clicks file.
    other = write_labels(str(tmp_path / "plain.nii"), stored, {"affine": np.diag([2.0, 2, 2, 1])})
    assert other == [str(tmp_path / "plain.nii")] and np.allclose(
        nib.load(other[0]).affine, np.diag([2.0, 2, 2, 1])
    )
