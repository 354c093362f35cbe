"""Bad inputs, round two: geometry a reader would silently misplace (DICOM series that are not one orthogonal
stack, NIfTI headers that disagree with their data) and label maps training would silently learn from."""

import gzip
import re
import struct

import nibabel as nib
import numpy as np
import pytest
from helpers.dicom import replace_text, write_dicom_series

from sammoe.data.io import read_image
from sammoe.errors import DataError


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# --- DICOM series geometry ---


def _image(depth=6, spacing=(0.7, 0.8, 2.5)):
    sitk = pytest.importorskip("SimpleITK")
    arr = (np.arange(8 * 7 * depth).reshape(depth, 7, 8) % 200).astype(np.int16)
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    return image


def _position(image, k, shift=(0.0, 0.0, 0.0)):
    point = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) + np.asarray(shift)
    return "\\".join(str(float(v)) for v in point)


def test_dicom_slice_with_another_orientation_is_refused(tmp_path):
    image = _image()
    tilted = {3: {"0020|0037": "1\\0\\0\\0\\0.9950042\\0.0998334"}}  # one slice turned 5.7 degrees about x
    folder = write_dicom_series(tmp_path / "mixed", image, tags=tilted)
    with pytest.raises(DataError, match="another orientation.*export each acquisition") as exc:
        read_image(folder)
    assert str(folder) in one_line(exc) and "003.dcm" in one_line(exc)


def test_dicom_series_tilted_as_a_whole_still_reads(tmp_path):
    """Every slice at one oblique orientation, stacked along its normal: a valid oblique grid."""
    image = _image()
    c, s = np.cos(0.3), np.sin(0.3)
    image.SetDirection((1, 0, 0, 0, c, -s, 0, s, c))
    iop = "\\".join(str(v) for v in (1, 0, 0, 0, c, s))
    folder = write_dicom_series(tmp_path / "oblique", image, tags={n: {"0020|0037": iop} for n in range(6)})
    volume = read_image(folder)
    assert volume.shape == (8, 7, 6)
    assert np.allclose(volume.spacing, (0.7, 0.8, 2.5), atol=1e-3)


def test_dicom_slice_at_another_pixel_spacing_or_gap_is_refused(tmp_path):
    image = _image()
    folder = write_dicom_series(tmp_path / "pixels", image, pixel_spacing={2: (0.9, 0.8)})
    with pytest.raises(DataError, match=r"002\.dcm is 8x7 pixels of 0\.9x0\.8 mm .* 0\.7x0\.8 mm") as exc:
        read_image(folder)
    assert str(folder) in one_line(exc)
    # one slice displaced along the stack: an uneven gap (today's check, kept)
    moved = {4: {"0020|0032": _position(image, 4, (0.0, 0.0, 1.0))}}
    with pytest.raises(DataError, match="not evenly spaced") as exc:
        read_image(write_dicom_series(tmp_path / "gap", image, tags=moved))
    assert "gap" in one_line(exc)


@pytest.mark.parametrize(
    "cosines",
    [
        "1\\0\\0\\1\\0\\0",  # row == column: no plane
        "0\\0\\0\\0\\0\\0",  # zero
        "2\\0\\0\\0\\2\\0",  # not unit length
        "1\\0\\0\\1\\1\\0",  # not orthogonal (and not unit)
    ],
)
def test_dicom_degenerate_orientation_is_refused(tmp_path, cosines):
    image = _image()
    valid = "1\\0\\0\\0\\1\\0"
    folder = write_dicom_series(
        tmp_path / "degenerate", image, tags={n: {"0020|0037": valid} for n in range(6)}
    )
    for file in sorted(folder.iterdir()):
        replace_text(file, valid, cosines)
    with pytest.raises(
        DataError, match="degenerate ImageOrientationPatient .* orthogonal unit vectors"
    ) as exc:
        read_image(folder)
    assert str(folder) in one_line(exc)


@pytest.mark.parametrize("step", [(0.5, 0.0, 0.0), (0.0, 0.2, 0.0), (0.1, 0.1, 0.0)])
def test_dicom_gantry_tilted_series_is_refused(tmp_path, step):
    """Slice corners moving within the slice plane from slice to slice: a sheared stack, not an orthogonal
    grid (SimpleITK's series reader would build an orthogonal grid with a larger slice spacing)."""
    image = _image()
    sheared = {k: {"0020|0032": _position(image, k, np.asarray(step) * k)} for k in range(6)}
    folder = write_dicom_series(tmp_path / "tilted", image, tags=sheared)
    with pytest.raises(DataError, match=r"gantry-tilted \(sheared\) series: .*to an orthogonal grid") as exc:
        read_image(folder)
    assert str(folder) in one_line(exc)


def test_dicom_slice_without_a_position_is_refused(tmp_path):
    image = _image()
    folder = write_dicom_series(tmp_path / "noposition", image)
    # Renaming the tag's number hides the position from a reader (same length, so the file stays valid).
    data = (folder / "002.dcm").read_bytes()
    assert data.count(b"\x20\x00\x32\x00") == 1
    (folder / "002.dcm").write_bytes(data.replace(b"\x20\x00\x32\x00", b"\x20\x00\x33\x00"))
    with pytest.raises(DataError, match=r"002\.dcm has no ImagePositionPatient") as exc:
        read_image(folder)
    assert str(folder) in one_line(exc)


# --- NIfTI header vs data ---


def _nifti(path, shape=(6, 5, 4), intent=None):
    array = np.random.default_rng(0).normal(100, 10, shape).astype(np.float32)
    image = nib.Nifti1Image(array, np.eye(4))
    if intent is not None:
        image.header.set_intent(intent)
    nib.save(image, path)
    return path


def _patch(path, offset, fmt, *values):
    """Overwrite header fields in a written (uncompressed or gzipped) NIfTI-1 file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = bytearray(f.read())
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    with opener(path, "wb") as f:
        f.write(bytes(data))
    return path


@pytest.mark.parametrize("name", ["zero.nii", "zero.nii.gz"])
def test_nifti_with_data_offset_inside_the_header_is_refused(tmp_path, name):
    """vox_offset 0: nibabel reads the header bytes as the first voxels (1..351 it refuses itself)."""
    path = _patch(_nifti(tmp_path / name), 108, "<f", 0.0)  # vox_offset
    with pytest.raises(
        DataError, match=r"vox_offset .* inside the 352-byte header.*set vox_offset to 352"
    ) as exc:
        read_image(path)
    assert str(path) in one_line(exc)


@pytest.mark.parametrize("pixdim", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, 0.0)])
@pytest.mark.parametrize("qform_code", [0, 1])
def test_nifti_with_no_voxel_size_and_no_sform_is_refused(tmp_path, pixdim, qform_code):
    """nibabel turns a zero pixdim into 1 and a negative one positive: the grid would be made up."""
    path = tmp_path / "flat.nii"
    image = nib.Nifti1Image(np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32), None)
    image.header.set_sform(None, code=0)
    image.header.set_qform(np.eye(4) if qform_code else None, code=qform_code)
    nib.save(image, path)
    _patch(path, 80, "<3f", *pixdim)  # pixdim[1:4]
    with pytest.raises(DataError, match=r"pixdim\[1:4\] .* zero, negative .* write the voxel sizes") as exc:
        read_image(path)
    assert str(path) in one_line(exc)
    # with an sform the pixdim does not place the grid: still read
    image.header.set_sform(np.diag([2.0, 2.0, 2.0, 1.0]), code=1)
    nib.save(image, path)
    _patch(path, 80, "<3f", *pixdim)
    assert np.allclose(read_image(path).spacing, 2.0)


@pytest.mark.parametrize("byte", [-8, -5, -2])  # CRC32 (first and last byte), then ISIZE
def test_gzipped_nifti_with_a_bad_trailer_is_refused(tmp_path, byte):
    """nibabel reads a .nii.gz up to its last voxel and never reaches the gzip trailer, so a corrupted
    (e.g. bit-flipped) file whose CRC no longer matches was read silently."""
    path = _nifti(tmp_path / "big.nii.gz", shape=(48, 48, 48))
    data = bytearray(path.read_bytes())
    data[byte] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"cannot read NIfTI \((CRC check failed|Incorrect length).*corrupt"
    ) as exc:
        read_image(path)
    assert str(path) in one_line(exc)


@pytest.mark.parametrize(
    "shape,intent",
    [((6, 5, 4, 1, 1), "vector"), ((6, 5, 4, 1), "vector"), ((6, 5, 4, 1, 1), "displacement vector")],
)
def test_nifti_with_a_vector_per_voxel_is_not_squeezed(tmp_path, shape, intent):
    path = _nifti(tmp_path / "field.nii.gz", shape=shape, intent=intent)
    with pytest.raises(
        DataError, match=rf"shape {re.escape(str(shape))} holds a {intent} .* as a 3D NIfTI"
    ) as exc:
        read_image(path)
    assert str(path) in one_line(exc)


@pytest.mark.parametrize("shape", [(6, 5, 4, 1), (6, 5, 4, 1, 1)])
def test_nifti_with_singleton_axes_and_no_intent_still_reads(tmp_path, shape):
    assert read_image(_nifti(tmp_path / "one.nii.gz", shape=shape)).shape == (6, 5, 4)
    assert read_image(_nifti(tmp_path / "one.nii", shape=shape)).shape == (6, 5, 4)


# --- training labels ---


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from sammoe.data.phantoms import make_phantom_dataset

    return make_phantom_dataset(
        tmp_path_factory.mktemp("labels") / "Dataset901_Phantom",
        n_cases=4,
        n_test=1,
        shape=(40, 40, 24),
        spacing=(3.6, 3.6, 6.0),
    )


def _copy_with_label(phantom, tmp_path, change, case="phantom_002", folder="labelsTr"):
    """A copy of the phantom dataset whose one label file ``change`` (array -> array) rewrote."""
    import shutil

    root = tmp_path / phantom.name
    shutil.copytree(phantom, root)
    path = root / folder / f"{case}.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(change(np.asarray(img.dataobj)), img.affine), path)
    return root, path


def _module(root, tmp_path, **kwargs):
    from sammoe.lit.datamodule import SegDataModule

    settings = {
        "crop_size": 16,
        "spacing": 4.0,
        "batch_size": 1,
        "cache_dir": str(tmp_path / "cache"),
        **kwargs,
    }
    return SegDataModule(roots=str(root), **settings)


def _undeclared(array):
    array = array.astype(np.uint8)
    array[0, 0, 0] = 9
    return array


def _fractional(array):
    array = array.astype(np.float32)
    array[array == 1] = 1.5
    return array


@pytest.mark.parametrize(
    "change,message",
    [
        (_undeclared, r"label values \[9\] are not declared in the labels of dataset Dataset901_Phantom"),
        (_fractional, "label map holds non-integer values; save labels as integers"),
    ],
)
@pytest.mark.parametrize("folder,case", [("labelsTr", "phantom_002"), ("labelsTs", "phantom_004")])
def test_every_label_is_checked_when_the_data_module_is_set_up(
    phantom, tmp_path, change, message, folder, case
):
    """Before: only a batch that drew the case read its label, so a short run trained on the others (and
    evaluation never checked values at all)."""
    root, path = _copy_with_label(phantom, tmp_path, change, case=case, folder=folder)
    dm = _module(root, tmp_path, classes=["liver"])
    with pytest.raises(DataError, match=message) as exc:
        dm.setup("fit")
    assert str(path) in one_line(exc)


def test_label_check_is_memoised_and_sees_a_changed_file(phantom, tmp_path):
    from sammoe.data import cache as cache_module

    root, path = _copy_with_label(phantom, tmp_path, lambda a: a)
    dm = _module(root, tmp_path)
    dm.setup("fit")
    assert len(list((tmp_path / "cache" / "labels").glob("*.json"))) == 5  # 4 training labels + 1 test label
    # a rerun reads no label: the values come from the memo
    calls = []
    original = cache_module.read_label
    cache_module.read_label = lambda *a, **k: calls.append(a) or original(*a, **k)
    try:
        _module(root, tmp_path).setup("fit")
        assert calls == []
        # a label rewritten since is read again and refused
        img = nib.load(path)
        nib.save(nib.Nifti1Image(_undeclared(np.asarray(img.dataobj)), img.affine), path)
        with pytest.raises(DataError, match=r"label values \[9\] are not declared"):
            _module(root, tmp_path).setup("fit")
        assert len(calls) == 1
    finally:
        cache_module.read_label = original


def test_float_label_map_of_whole_numbers_and_region_values_pass(phantom, tmp_path):
    root, _ = _copy_with_label(phantom, tmp_path, lambda a: a.astype(np.float32))
    _module(root, tmp_path).setup("fit")
    # nnU-Net regions: values named only inside a region's list are declared too
    import json

    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["organs"] = [meta["labels"].pop("liver"), meta["labels"]["spleen"]]
    (root / "dataset.json").write_text(json.dumps(meta))
    dm = _module(root, tmp_path / "other", classes=["spleen"])
    dm.setup("fit")
    assert dm.train_dataset()[0]["class_name"] == "spleen"  # its crop reads a label holding the liver's value
