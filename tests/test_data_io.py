"""Reading/writing volumes and every bad input the issue lists: one DataError line naming file and fix."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers.dicom import write_dicom_series

from sammoe.data.io import Volume, check_label_values, read_image, read_label, write_label
from sammoe.errors import DataError


def save(path, array, affine=None):
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), path)
    return path


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.fixture
def case(tmp_path):
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = [10, 20, -30]
    image = np.random.default_rng(0).normal(100, 10, (12, 10, 8)).astype(np.float32)
    label = np.zeros((12, 10, 8), np.uint8)
    label[3:8, 2:6, 2:5] = 1
    label[8:10, 6:9, 4:7] = 2
    return save(tmp_path / "img.nii.gz", image, affine), save(tmp_path / "lab.nii.gz", label, affine)


def test_read_image_and_label(case):
    img = read_image(case[0])
    lab = read_label(case[1], like=img)
    assert img.array.shape == (12, 10, 8) and img.array.dtype == np.float32
    assert np.allclose(img.spacing, [0.8, 0.8, 2.5])
    assert lab.array.dtype == np.uint8 and set(np.unique(lab.array)) == {0, 1, 2}
    check_label_values(lab, [1, 2])


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as exc:
        read_image(tmp_path / "nope.nii.gz")
    assert str(tmp_path / "nope.nii.gz") in one_line(exc)


def test_truncated_and_garbage_files(case, tmp_path):
    data = case[0].read_bytes()
    truncated = tmp_path / "trunc.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated") as exc:
        read_image(truncated)
    assert "trunc.nii.gz" in one_line(exc)
    raw = tmp_path / "raw.nii"
    raw.write_bytes(gzip.decompress(data)[:400])  # header only, no voxel data
    with pytest.raises(DataError, match="cannot read"):
        read_image(raw)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a nifti file" * 10)
    with pytest.raises(DataError, match="cannot read"):
        read_image(garbage)
    other = tmp_path / "x.png"
    other.write_bytes(b"x")
    with pytest.raises(DataError, match="unsupported file type"):
        read_image(other)


def test_dimensions(tmp_path):
    single = save(tmp_path / "four1.nii.gz", np.arange(120, dtype=np.float32).reshape(4, 5, 6, 1))
    assert read_image(single).array.shape == (4, 5, 6)
    multi = save(tmp_path / "four3.nii.gz", np.arange(360, dtype=np.float32).reshape(4, 5, 6, 3))
    with pytest.raises(DataError, match="3 volumes.*channel") as exc:
        read_image(multi)
    assert "four3.nii.gz" in one_line(exc)
    assert read_image(multi, channel=2).array.shape == (4, 5, 6)
    with pytest.raises(DataError, match="channel=5"):
        read_image(multi, channel=5)
    flat = save(tmp_path / "two.nii.gz", np.ones((4, 5), np.float32))
    with pytest.raises(DataError, match="expected a 3D volume"):
        read_image(flat)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(tmp_path, bad):
    arr = np.ones((4, 4, 4), np.float32)
    arr[1, 2, 3] = bad
    with pytest.raises(DataError, match="NaN/inf") as exc:
        read_image(save(tmp_path / "nan.nii.gz", arr))
    assert "nan.nii.gz" in one_line(exc)


def test_singular_affine(tmp_path):
    header = nib.Nifti1Header()
    header["sform_code"] = 1
    header["qform_code"] = 0
    header["srow_x"] = [1, 0, 0, 0]
    header["srow_y"] = [0, 1, 0, 0]
    header["srow_z"] = [0, 0, 0, 0]
    path = tmp_path / "sing.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), None, header), path)
    with pytest.raises(DataError, match="affine") as exc:
        read_image(path)
    assert "sing.nii.gz" in one_line(exc)


def test_label_grid_mismatch(case, tmp_path):
    img = read_image(case[0])
    with pytest.raises(DataError, match="shape .* differs") as exc:
        read_label(save(tmp_path / "small.nii.gz", np.zeros((12, 10, 7), np.uint8), img.affine), like=img)
    assert "small.nii.gz" in one_line(exc)
    shifted = img.affine.copy()
    shifted[0, 3] += 0.5
    with pytest.raises(DataError, match="affine differs .* 0.5 mm"):
        read_label(save(tmp_path / "shift.nii.gz", np.zeros(img.shape, np.uint8), shifted), like=img)
    nudged = img.affine.copy()
    nudged[0, 3] += 1e-5  # float noise within tolerance is accepted
    read_label(save(tmp_path / "nudge.nii.gz", np.zeros(img.shape, np.uint8), nudged), like=img)


def test_bad_label_values(case, tmp_path):
    with pytest.raises(DataError, match="non-integer"):
        read_label(save(tmp_path / "f.nii.gz", np.full((3, 3, 3), 0.5, np.float32)))
    with pytest.raises(DataError, match="negative"):
        read_label(save(tmp_path / "n.nii.gz", np.full((3, 3, 3), -1, np.int16)))
    assert (
        read_label(save(tmp_path / "ok.nii.gz", np.full((3, 3, 3), 2.0, np.float32))).array.dtype == np.uint8
    )
    assert (
        read_label(save(tmp_path / "big.nii.gz", np.full((3, 3, 3), 300, np.int32))).array.dtype == np.uint16
    )
    lab = read_label(case[1])
    with pytest.raises(DataError, match=r"label values \[2\] are not declared in dataset.json") as exc:
        check_label_values(lab, [1])
    assert "lab.nii.gz" in one_line(exc)


def test_write_label(case, tmp_path):
    img = read_image(case[0])
    pred = np.zeros(img.shape, bool)
    pred[2:5, 2:5, 2:5] = True
    out = write_label(tmp_path / "out" / "pred.nii.gz", torch.from_numpy(pred)[None, None], img)
    back = nib.load(out)
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(back.affine, img.affine)
    assert np.allclose(back.header.get_zooms(), img.header.get_zooms())
    assert np.array_equal(np.asarray(back.dataobj), pred.astype(np.uint8))
    assert [p.name for p in out.parent.iterdir()] == ["pred.nii.gz"]  # no temp file left behind
    big = np.full(img.shape, 1000, np.int32)
    assert nib.load(write_label(tmp_path / "big.nii.gz", big, img)).get_data_dtype() == np.uint16


def test_write_label_refusals(case, tmp_path):
    img = read_image(case[0])
    arr = np.zeros(img.shape, np.uint8)
    before = case[0].read_bytes()
    with pytest.raises(DataError, match="would replace the input") as exc:
        write_label(case[0], arr, img, overwrite=True)
    assert case[0].read_bytes() == before
    one_line(exc)
    with pytest.raises(DataError, match="would replace the input"):
        write_label(case[1], arr, img, overwrite=True, protect=[case[1]])
    target = write_label(tmp_path / "p.nii.gz", arr, img)
    with pytest.raises(DataError, match="already exists.*overwrite=True"):
        write_label(target, arr, img)
    arr[0, 0, 0] = 3
    write_label(target, arr, img, overwrite=True)
    assert np.asarray(nib.load(target).dataobj)[0, 0, 0] == 3
    with pytest.raises(DataError, match="does not match reference"):
        write_label(tmp_path / "q.nii.gz", np.zeros((2, 2, 2), np.uint8), img)
    with pytest.raises(DataError, match=r"must end with \.nii"):
        write_label(tmp_path / "q.png", arr, img)
    with pytest.raises(DataError, match="non-integer"):
        write_label(tmp_path / "r.nii.gz", np.full(img.shape, 0.5), img)


def test_dicom_series_round_trip(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    arr = (np.arange(6 * 7 * 5).reshape(5, 7, 6) % 200).astype(np.int16)  # sitk order z, y, x
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.0))
    image.SetOrigin((-10.0, 5.0, 30.0))
    folder = tmp_path / "series"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr.shape[0]):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")  # series instance UID
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k))
        sl.SetMetaData("0018|0050", "2.0")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    vol = read_image(folder)
    assert vol.array.shape == (6, 7, 5)
    assert np.array_equal(vol.array, arr.transpose(2, 1, 0))
    expected = np.diag([-0.7, -0.8, 2.0, 1.0])
    expected[:3, 3] = [10.0, -5.0, 30.0]  # LPS origin -> RAS
    assert np.allclose(vol.affine, expected, atol=1e-4)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no DICOM series"):
        read_image(empty)


def test_volume_from_arrays():
    affine = np.diag([0.8, -1.2, 2.5, 1.0])
    affine[:3, :3] = affine[:3, :3] @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1.0]])  # axes 0 and 1 swapped
    vol = Volume(np.zeros((2, 3, 4), np.int16), affine)
    assert vol.shape == (2, 3, 4) and all(isinstance(s, int) for s in vol.shape)
    assert np.allclose(vol.spacing, [1.2, 0.8, 2.5])  # per array axis: the column norms of the affine
    assert vol.path is None and vol.header is None


def _dicom_series(folder, depth=6, skip=(), duplicate=None):
    sitk = pytest.importorskip("SimpleITK")
    arr = (np.arange(8 * 7 * depth).reshape(depth, 7, 8) % 200).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.7, 0.8, 2.5))
    slices = [k for k in range(depth) if k not in skip] + ([duplicate] if duplicate is not None else [])
    return write_dicom_series(folder, image, slices)


def test_dicom_series_with_a_missing_or_duplicated_slice_is_refused(tmp_path):
    assert read_image(_dicom_series(tmp_path / "whole")).shape == (8, 7, 6)
    with pytest.raises(DataError, match=r"not evenly spaced: a gap of 5\.00 mm .* 2\.50 mm") as exc:
        read_image(_dicom_series(tmp_path / "gap", skip=(3,)))
    assert "gap" in one_line(exc)
    with pytest.raises(DataError, match="share the position 5.00 mm"):
        read_image(_dicom_series(tmp_path / "dup", duplicate=2))


def test_header_claiming_too_many_voxels_is_refused_before_reading(tmp_path, monkeypatch):
    """A 2 KB .nii.gz whose header claims 800^3 voxels: refused from the header, no data read."""
    path = tmp_path / "bomb.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((800, 800, 800))
    header.set_data_dtype(np.float32)
    with open(path, "wb") as handle:
        handle.write(header.binaryblock + b"\0" * 4)
    import tracemalloc

    tracemalloc.start()
    with pytest.raises(DataError, match=r"512,000,000 voxels, more than the limit.*SAMMOE_MAX_VOXELS") as exc:
        read_image(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20 and "bomb.nii" in one_line(exc)
    monkeypatch.setenv("SAMMOE_MAX_VOXELS", "100")
    with pytest.raises(DataError, match="more than the limit of 100"):
        read_image(
            save(tmp_path / "ok.nii.gz", np.random.default_rng(0).normal(size=(5, 5, 5)).astype(np.float32))
        )


def test_complex_rgb_constant_and_overflowing_images_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    complex_ = save(tmp_path / "c.nii.gz", (rng.normal(size=(4, 4, 4)) + 1j).astype(np.complex64))
    with pytest.raises(DataError, match="complex-valued"):
        read_image(complex_)
    rgb = np.zeros((4, 4, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), tmp_path / "rgb.nii.gz")
    with pytest.raises(DataError, match="colour"):
        read_image(tmp_path / "rgb.nii.gz")
    for value in (0.0, 7.0):
        with pytest.raises(DataError, match="every voxel has the value") as exc:
            read_image(save(tmp_path / f"flat{value}.nii.gz", np.full((4, 4, 4), value, np.float32)))
        one_line(exc)
    assert read_label(save(tmp_path / "empty_label.nii.gz", np.zeros((4, 4, 4), np.uint8))).array.max() == 0
    img = nib.Nifti1Image(rng.integers(0, 30000, size=(4, 4, 4)).astype(np.int16), np.eye(4))
    img.header.set_slope_inter(1e38, 0)
    nib.save(img, tmp_path / "slope.nii.gz")
    with pytest.raises(DataError, match="exceed the float32 range.*scl_slope"):
        read_image(tmp_path / "slope.nii.gz")
