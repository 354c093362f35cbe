"""DICOM Segmentation (DICOM-SEG) output for a DICOM series input, through highdicom (``sammoe[dicom]``).

The label map must be on the input series' own grid (what ``sammoe segment`` writes): frame k of the SEG is
slice k of the series in the order ``sammoe.data.io`` stacked it, so each frame references its source slice.
Each target is one segment (number = label value) named after the target, with the expert that segmented it
as the segment's description; the algorithm is recorded as semi-automatic (clicks) by sammoe.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sammoe.errors import ConfigError, DataError

SUFFIX = ".dcm"


def is_dicom_seg(path: str | Path) -> bool:
    return str(path).lower().endswith(SUFFIX)


def check_available(image: str | Path, out: str | Path) -> None:
    """Refuse a DICOM-SEG output early: it needs a DICOM series folder as input and highdicom installed."""
    if not Path(image).is_dir():
        raise ConfigError(
            f"--out {out}: a DICOM-SEG (.dcm) output references the slices of a DICOM series, "
            f"but --image {image} is a file; write .nii.gz or .seg.nrrd instead"
        )
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ConfigError(
            f'--out {out}: DICOM-SEG needs highdicom; install it with `pip install "sammoe[dicom]"`'
        ) from None


def write_dicom_seg(
    tmp: Path, labels: np.ndarray, series: Path, segments: list[tuple[int, str, str]]
) -> None:
    """Write ``labels`` ((X, Y, Z) on the series grid, values = segment numbers) as a DICOM-SEG to ``tmp``."""
    from importlib.metadata import version

    import highdicom as hd
    import pydicom
    import SimpleITK as sitk
    from pydicom.sr.codedict import codes

    software = version("sammoe")  # the data layer does not import the package root
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(series), reader.GetGDCMSeriesIDs(str(series))[0])
    sources = [pydicom.dcmread(name) for name in files]
    if len(sources) != labels.shape[2]:
        raise DataError(f"{series}: {len(sources)} slices, but the label map has {labels.shape[2]}")
    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slices, rows = y, columns = x)
    values = sorted({int(v) for v, _, _ in segments})
    if values != list(range(1, len(values) + 1)):
        raise DataError(f"DICOM-SEG segment numbers must be 1..N, got {values}")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="sammoe", version=software, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = []
    for value, name, description in sorted(segments):
        segment = hd.seg.SegmentDescription(
            segment_number=int(value),
            segment_label=name[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
            algorithm_identification=algorithm,
        )
        if description:
            segment.SegmentDescription = description[:64]
        descriptions.append(segment)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames.astype(np.uint8 if len(values) < 256 else np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=9901,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="sammoe",
        manufacturer_model_name="sammoe",
        software_versions=software,
        device_serial_number="none",
        series_description="sammoe segmentation (research use only)",
    )
    seg.save_as(str(tmp))
