"""DICOM series written from SimpleITK images, for the readers' tests."""

from __future__ import annotations

from pathlib import Path


def write_dicom_series(
    folder: Path,
    image,
    slices=None,
    uid: str = "1.2.826.0.1.3680043.2.1125.7",
    tags=None,
    pixel_spacing=None,
) -> Path:
    """Write a SimpleITK 3D image as one DICOM file per slice (``slices``: the k indices, repeats allowed),
    with the series UID, slice position and instance number a reader sorts by. ``tags`` ({n: {tag: text}})
    and ``pixel_spacing`` ({n: (x, y)}) change the n-th written slice's header (its position, orientation,
    in-plane spacing)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for n, k in enumerate(range(image.GetSize()[2]) if slices is None else slices):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", uid)
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0013", str(k))
        for tag, text in (tags or {}).get(n, {}).items():
            sl.SetMetaData(tag, text)
        if n in (pixel_spacing or {}):
            sl.SetSpacing(pixel_spacing[n])
        writer.SetFileName(str(folder / f"{n:03d}.dcm"))
        writer.Execute(sl)
    return folder


def replace_text(file: Path, old: str, new: str) -> None:
    """Swap a header text for another of the same length in a written file: a value SimpleITK's writer
    refuses (e.g. degenerate direction cosines) but a scanner or a broken anonymiser may write."""
    assert len(old) == len(new)
    data = file.read_bytes()
    assert data.count(old.encode()) == 1, f"{old!r} occurs {data.count(old.encode())} times in {file}"
    file.write_bytes(data.replace(old.encode(), new.encode()))
