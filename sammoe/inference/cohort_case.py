"""One case of a batch segmentation: segment it, score it against a reference if there is one, write it, and
tell later whether it is complete.

The label map is written first, then the report (atomically, through ``sammoe.files``); the report records
the label map's and the prompts file's sha256, so a case is complete only when its report exists, its label
map is the one the report describes and its prompts have not changed since. A run killed mid-case leaves at
most a label map without a report: that case is done again, and nothing partial is ever in place.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.clicks_file import round_voxel
from sammoe.data.cohort import CohortCase
from sammoe.data.io import Volume, read_label
from sammoe.errors import DataError
from sammoe.eval.metrics import dice_nsd
from sammoe.files import sha256_file, write_text
from sammoe.inference.outputs import SegmentationOutputs
from sammoe.inference.targets import Segmentation, Target, check_target

REPORT_FORMAT = 1


def prompts_digest(case: CohortCase) -> str | None:
    return None if case.prompts is None or not case.prompts.is_file() else sha256_file(case.prompts)


def is_complete(case: CohortCase) -> bool:
    """The case's report exists and describes the label map on disk and the prompts file as it is now."""
    try:
        report = json.loads(case.report.read_text(encoding="utf-8"))
        return (
            isinstance(report, dict)
            and report.get("complete") is True
            and report.get("labels_sha256") == sha256_file(case.labels)
            and report.get("prompts_sha256") == prompts_digest(case)
        )
    except (OSError, ValueError):
        return False


def previous_row(case: CohortCase) -> dict[str, Any]:
    """A complete case's summary row from its report, for a rerun that skips it (its time is the run's
    that made it; its scores stay in the scores table)."""
    report = json.loads(case.report.read_text(encoding="utf-8"))
    return summary_row(case, report, status="skipped")


def summary_row(case: CohortCase, report: dict[str, Any], status: str = "done") -> dict[str, Any]:
    scores = report.get("scores") or []
    dice = [s["dice"] for s in scores if "dice" in s]
    return {
        "case": case.case_id,
        "status": status,
        "labels": str(case.labels),
        "targets": len(report.get("targets") or []),
        "seconds": report.get("seconds"),
        "peak_rss_mb": report.get("peak_rss_mb"),
        "mean_dice": round(sum(dice) / len(dice), 4) if dice else None,
        "scores": [{"case": case.case_id, **s} for s in scores],
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)


def _first_positive(target: Target, index: int, volume: Volume) -> tuple[int, int, int]:
    _, vox, labels = check_target(target, index, volume)
    return tuple(int(v) for v in round_voxel(vox[int(np.flatnonzero(labels == 1)[0])]))


def score(seg: Segmentation, targets: list[Target], reference: Path) -> list[dict[str, Any]]:
    """Dice and NSD (1 mm) per target against ``reference``: the structure a target means is the reference
    label under its first positive click (as the clicks simulated for evaluation are drawn); a click on
    reference background scores nothing, and says so."""
    truth = read_label(reference, like=seg.volume)
    scores = []
    for index, (target, result) in enumerate(zip(targets, seg.targets)):
        value = int(truth.array[_first_positive(target, index, seg.volume)])
        row: dict[str, Any] = {"target": result.name, "reference_label": value}
        if value == 0:
            row["note"] = "the first positive click lies on reference background: not scored"
        else:
            dice, nsd = dice_nsd(seg.labels == result.value, truth.array == value, seg.volume.spacing)
            row.update(dice=round(dice, 4), nsd=round(nsd, 4))
        scores.append(row)
    return scores


def segment_case(
    predictor: Any, case: CohortCase, volume: Volume, targets: list[Target], *, probabilities: bool = False
) -> dict[str, Any]:
    """Segment ``case`` (its volume read and its targets parsed already), write its label map then its
    report, and return the report. A click outside the image is a ``DataError`` naming the prompts file."""
    started = time.perf_counter()
    predictor.set_image(volume)
    try:
        seg = predictor.predict(targets, probabilities=probabilities)
    except DataError as err:
        raise DataError(f"{case.prompts}: {err}") from None
    scores = score(seg, targets, case.reference) if case.reference is not None else None
    SegmentationOutputs(case.labels).write(seg, targets, {}, overwrite=True)
    report = seg.report()
    report.update(
        case=case.case_id,
        image=str(case.image),
        prompts=str(case.prompts),
        prompts_sha256=prompts_digest(case),
        labels=str(case.labels),
        labels_sha256=sha256_file(case.labels),
        device=str(predictor.device),
        seconds=round(time.perf_counter() - started, 3),
        peak_rss_mb=peak_rss_mb(),
    )
    if scores is not None:
        report["reference"] = str(case.reference)
        report["scores"] = scores
    report["format"] = REPORT_FORMAT
    report["complete"] = True
    write_text(case.report, json.dumps(report, indent=2, allow_nan=False) + "\n")
    return report
