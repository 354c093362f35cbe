"""A cohort for batch segmentation: which scans, which prompts file each, and where each output goes.

Three ways to name the cases (torch-free; nothing here reads an image):
- a folder of images: NIfTI, NRRD/NHDR, MHA/MHD, MGH/MGZ files and DICOM series folders (a sub-folder holding
  ``.dcm`` files or DICOM files without an extension); an nnU-Net ``imagesTs`` folder's ``CASE_0000.nii.gz``
  is case ``CASE`` (other channels are not separate cases);
- an nnU-Net / MSD dataset root (a ``dataset.json`` beside ``imagesTs``/``imagesTr``): its test images, else
  its training images, with the matching ``labelsTs``/``labelsTr`` folder as reference labels when present;
- a CSV manifest with columns ``image`` and ``prompts`` (``output``, ``case`` and ``label`` optional; relative
  paths are relative to the CSV's folder).
Prompts are the clicks files ``sammoe segment --clicks`` reads: ``CASE.json``, ``CASE.clicks.json`` or
``CASE.mrk.json`` in the prompts folder, or ``CASE.clicks.json`` / ``CASE.mrk.json`` beside the image. A case
without one is listed with that reason (it fails; the others run).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sammoe.data.formats import SUFFIXES as OTHER_SUFFIXES
from sammoe.data.io import NIFTI_SUFFIXES
from sammoe.errors import ConfigError

OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".seg.nrrd", ".dcm")
REPORT_SUFFIX = ".report.json"
_IMAGE_SUFFIXES = NIFTI_SUFFIXES + OTHER_SUFFIXES
# files that sit beside images but are not images: a segmentation, a data file named by a header, prompts
_NOT_IMAGES = (".seg.nrrd", ".raw", ".zraw", ".json")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_PROMPT_NAMES = (".json", ".clicks.json", ".mrk.json")
_BESIDE_NAMES = (".clicks.json", ".mrk.json")
_MANIFEST_COLUMNS = {"case", "image", "prompts", "output", "label"}


@dataclass(frozen=True)
class CohortCase:
    """One scan to segment: ``prompts`` None means none was found (``problem`` says where it looked)."""

    case_id: str
    image: Path
    prompts: Path | None
    labels: Path  # the label map written (its format by extension)
    report: Path  # the per-case report, written last: its presence marks the case complete
    reference: Path | None = None  # a ground-truth label map, for scoring
    problem: str | None = None


def _suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    lower = name.lower()
    return next((s for s in sorted(suffixes, key=len, reverse=True) if lower.endswith(s)), None)


def _stem(name: str) -> str:
    suffix = _suffix(name, _IMAGE_SUFFIXES)
    return name[: -len(suffix)] if suffix else name


def _is_dicom_folder(folder: Path) -> bool:
    """A folder of slices: ``.dcm`` files, or extension-less files starting with the DICOM preamble."""
    for entry in sorted(folder.iterdir())[:50]:
        if not entry.is_file():
            continue
        if entry.suffix.lower() == ".dcm":
            return True
        if not entry.suffix:
            try:
                with open(entry, "rb") as handle:
                    if handle.read(132)[128:132] == b"DICM":
                        return True
            except OSError:
                continue
    return False


def _images_in(folder: Path) -> list[tuple[str, Path]]:
    """(case id, path) of every image in ``folder``, channel 0 only for nnU-Net-named files."""
    found: list[tuple[str, Path]] = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.startswith("."):
            continue
        if entry.is_dir():
            if _is_dicom_folder(entry):
                found.append((name, entry))
            continue
        if _suffix(name, _NOT_IMAGES) or not _suffix(name, _IMAGE_SUFFIXES):
            continue
        stem = _stem(name)
        channel = _CHANNEL.match(stem)
        if channel:
            if channel["channel"] != "0000":
                continue  # another modality of the same case: channel 0 is the one segmented
            stem = channel["case"]
        found.append((stem, entry))
    return found


def _prompts_for(case_id: str, image: Path, prompts: Path | None) -> tuple[Path | None, str | None]:
    if prompts is not None:
        candidates = [prompts / f"{case_id}{s}" for s in _PROMPT_NAMES]
    else:
        candidates = [image.parent / f"{_stem(image.name)}{s}" for s in _BESIDE_NAMES]
        candidates += [image.parent / f"{case_id}{s}" for s in _BESIDE_NAMES]
    found = list(dict.fromkeys(c for c in candidates if c.is_file()))
    if len(found) > 1:
        return None, f"two prompt files ({found[0].name}, {found[1].name}); keep one"
    if not found:
        names = ", ".join(dict.fromkeys(c.name for c in candidates))
        where = prompts if prompts is not None else image.parent
        return None, f"no prompts file ({names} in {where})"
    return found[0], None


def _reference_for(case_id: str, labels: Path | None) -> Path | None:
    if labels is None:
        return None
    for suffix in _IMAGE_SUFFIXES:
        path = labels / f"{case_id}{suffix}"
        if path.is_file():
            return path
    return None


def _output_paths(out: Path, case_id: str, suffix: str, output: Path | None) -> tuple[Path, Path]:
    labels = output if output is not None else out / f"{case_id}{suffix}"
    found = _suffix(labels.name, OUTPUT_SUFFIXES)
    if found is None:
        raise ConfigError(f"output {labels}: must end with {', '.join(OUTPUT_SUFFIXES)}")
    return labels, labels.with_name(labels.name[: -len(found)] + REPORT_SUFFIX)


def _dataset_folders(root: Path) -> tuple[Path, Path | None]:
    """An nnU-Net/MSD root's images folder (test images first) and its labels folder, if any."""
    for images, labels in (("imagesTs", "labelsTs"), ("imagesTr", "labelsTr")):
        if (root / images).is_dir():
            return root / images, (root / labels) if (root / labels).is_dir() else None
    raise ConfigError(f"{root}: dataset.json but no imagesTs or imagesTr folder")


def _read_manifest(manifest: Path, out: Path, suffix: str) -> list[CohortCase]:
    if not manifest.is_file():
        raise ConfigError(f"manifest {manifest}: file not found")
    try:
        with open(manifest, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
            columns = set(rows[0]) if rows else set()
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(f"manifest {manifest}: cannot read it as CSV ({err})") from None
    if not rows:
        raise ConfigError(
            f"manifest {manifest}: no rows; give a header line (image,prompts[,output]) and cases"
        )
    if not {"image", "prompts"} <= columns or columns - _MANIFEST_COLUMNS - {None}:
        raise ConfigError(
            f"manifest {manifest}: columns are image, prompts and optionally output, case, label; got "
            f"{sorted(c for c in columns if c)}"
        )
    base = manifest.parent
    cases = []
    for number, row in enumerate(rows, start=2):
        if not (row.get("image") or "").strip():
            raise ConfigError(f"manifest {manifest}: line {number} has no image")

        def path(key: str, row: dict = row) -> Path | None:
            value = (row.get(key) or "").strip()
            return None if not value else base / os.path.expanduser(value)

        image = path("image")
        case_id = (row.get("case") or "").strip() or _stem(image.name)
        prompts = path("prompts")
        problem = None if prompts is not None and prompts.is_file() else f"prompts file {prompts} not found"
        labels, report = _output_paths(out, case_id, suffix, path("output"))
        cases.append(CohortCase(case_id, image, prompts, labels, report, path("label"), problem))
    return cases


def find_cases(
    images: str | os.PathLike | None = None,
    *,
    out: str | os.PathLike,
    prompts: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    labels: str | os.PathLike | None = None,
    suffix: str = ".nii.gz",
) -> list[CohortCase]:
    """Every case of the cohort, sorted by case id (so every process of a run agrees on the order)."""
    if (images is None) == (manifest is None):
        raise ConfigError("give either images (a folder or dataset) or manifest (a CSV), not both or neither")
    if suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"output suffix {suffix!r}: use one of {', '.join(OUTPUT_SUFFIXES)}")
    out = Path(out)
    if manifest is not None:
        cases = _read_manifest(Path(manifest), out, suffix)
    else:
        folder = Path(images)
        if not folder.is_dir():
            raise ConfigError(f"images {folder}: not a folder; give a folder of scans or a dataset root")
        reference = Path(labels) if labels is not None else None
        if (folder / "dataset.json").is_file():
            folder, found = _dataset_folders(folder)
            reference = reference or found
        if out.resolve() == folder.resolve() or folder.resolve() in out.resolve().parents:
            raise ConfigError(f"out {out}: inside the images folder {folder}; write the outputs elsewhere")
        prompt_folder = Path(prompts) if prompts is not None else None
        if prompt_folder is not None and not prompt_folder.is_dir():
            raise ConfigError(f"prompts {prompt_folder}: not a folder")
        if reference is not None and not reference.is_dir():
            raise ConfigError(f"labels {reference}: not a folder")
        cases = []
        for case_id, image in _images_in(folder):
            found_prompts, problem = _prompts_for(case_id, image, prompt_folder)
            label_path, report = _output_paths(out, case_id, suffix, None)
            cases.append(
                CohortCase(
                    case_id,
                    image,
                    found_prompts,
                    label_path,
                    report,
                    _reference_for(case_id, reference),
                    problem,
                )
            )
        if not cases:
            raise ConfigError(f"images {folder}: no scans found (NIfTI, NRRD, MHA/MHD, MGZ or DICOM folders)")
    seen: dict[str, Path] = {}
    for case in cases:
        if case.case_id in seen:
            raise ConfigError(
                f"two scans are case {case.case_id!r}: {seen[case.case_id]} and {case.image}; rename one"
            )
        seen[case.case_id] = case.image
    return sorted(cases, key=lambda c: c.case_id)
