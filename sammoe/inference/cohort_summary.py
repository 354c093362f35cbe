"""What a batch segmentation tells its user: a progress line per case, and at the end a summary (CSV and a
table) of done / skipped / failed cases with reasons, times and memory, plus Dice/NSD per target when scored.
Plain text and the standard csv module: the same lines read well in a terminal, a log file and a SLURM job.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sammoe.files import write_text

COLUMNS = (
    "case",
    "status",
    "seconds",
    "peak_rss_mb",
    "peak_gpu_mb",
    "targets",
    "mean_dice",
    "reason",
    "labels",
)
SCORE_COLUMNS = ("case", "target", "reference_label", "dice", "nsd", "note")


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(done: int, total: int, case_id: str, status: str, seconds: float, elapsed: float) -> str:
    """``[3/40] case_003 done in 2.1 s | 28.4 cases/min | ETA 1:18``: the rate over this process's cases."""
    rate = done / elapsed * 60 if elapsed > 0 else float("nan")
    eta = (total - done) * elapsed / done if done else float("nan")
    return (
        f"[{done}/{total}] {case_id} {status} in {seconds:.1f} s | {rate:.1f} cases/min | ETA {_clock(eta)}"
    )


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()


def write_summary(rows: Sequence[dict[str, Any]], path: Path) -> None:
    write_text(path, _csv(sorted(rows, key=lambda r: str(r["case"])), COLUMNS))


def write_scores(rows: Sequence[dict[str, Any]], path: Path) -> None:
    write_text(path, _csv(rows, SCORE_COLUMNS))


def summary_table(rows: Sequence[dict[str, Any]], wall_seconds: float) -> str:
    """A few lines for the end of the run: counts, the failures with reasons, time per case."""
    counts = Counter(r["status"] for r in rows)
    done = [r for r in rows if r["status"] == "done"]
    lines = [
        f"{len(rows)} case(s): {counts['done']} done, {counts['skipped']} skipped (complete before), "
        f"{counts['failed']} failed; {_clock(wall_seconds)} wall"
    ]
    if done:
        times = sorted(float(r["seconds"]) for r in done)
        lines.append(
            f"per case: median {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s; "
            f"peak memory {max(float(r.get('peak_rss_mb') or 0) for r in done):.0f} MiB"
        )
    scored = [float(r["mean_dice"]) for r in rows if r.get("mean_dice") not in (None, "")]
    if scored:
        lines.append(f"mean Dice over {len(scored)} scored case(s): {sum(scored) / len(scored):.4f}")
    for r in sorted((r for r in rows if r["status"] == "failed"), key=lambda r: str(r["case"])):
        lines.append(f"  failed {r['case']}: {r['reason']}")
    return "\n".join(lines)
