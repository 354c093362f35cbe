"""One table from the JSON files that benchmarks/gpu.sh collects (encoder, click latency, training steps).

    python benchmarks/gpu_summary.py FOLDER      # reads encoder.json, clicks.json, train_step.json there

A missing or failed section prints as such instead of hiding the others. Goals are issue 16's GPU goals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ENCODER_GOAL = 20.0  # official / ours seconds per volume at batch 32
REFINEMENT_GOAL_MS = 5.0


def rows(folder: Path) -> list[tuple[str, str, str, str, str]]:
    """(measure, official, sammoe, ratio, goal) rows; a section whose JSON is missing says so."""
    out: list[tuple[str, str, str, str, str]] = []
    encoder = _read(folder / "encoder.json")
    if encoder is None:
        out.append(("image encoder", "-", "-", "missing", ""))
    for row in (encoder or {}).get("batches", []):
        goal = f">= {ENCODER_GOAL:.0f}x" if row["batch"] == 32 else ""
        official = row.get("official_s")
        for label, key, ratio_key in (
            ("eager", "ours_s", "speedup"),
            ("compiled", "compiled_s", "speedup_compiled"),
        ):
            if row.get(key) is None:
                continue
            ratio = row.get(ratio_key)
            out.append(
                (
                    f"encoder b{row['batch']} {label} (ms/volume)",
                    _ms(official),
                    _ms(row[key]),
                    f"{ratio:.1f}x" if ratio else "-",
                    goal + (_verdict(ratio >= ENCODER_GOAL) if goal and ratio else ""),
                )
            )
    clicks = _read(folder / "clicks.json")
    if clicks is None:
        out.append(("click latency", "-", "-", "missing", ""))
    else:
        refinement = clicks["refinement_step_ms"]
        out += [
            ("first click (ms)", "-", f"{clicks['first_click_ms']:.1f}", "", ""),
            (
                "refinement, decoder step (ms)",
                "-",
                f"{refinement:.2f}",
                "",
                f"<= {REFINEMENT_GOAL_MS:.0f} ms" + _verdict(refinement <= REFINEMENT_GOAL_MS),
            ),
            ("refinement, add_click end to end (ms)", "-", f"{clicks['add_click_ms']:.1f}", "", ""),
        ]
    train = _read(folder / "train_step.json")
    if train is None:
        out.append(("training steps", "-", "-", "missing", ""))
    for mode, results in (train or {}).get("modes", {}).items():
        ours, official = results.get("ours"), results.get("official")
        for what, key, fmt in (("s/step", "s_per_step", ".3f"), ("peak GiB", "peak_gib", ".2f")):
            ratio = official[key] / ours[key] if ours and official and ours[key] > 0 else None
            out.append(
                (
                    f"train {mode} {what}",
                    format(official[key], fmt) if official else "failed",
                    format(ours[key], fmt) if ours else "failed",
                    f"{ratio:.2f}x" if ratio else "-",
                    "",
                )
            )
    return out


def table(folder: Path) -> str:
    header = ("measure", "official", "sammoe", "official/sammoe", "goal")
    body = rows(folder)
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=False)) for r in [header, *body]]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    devices = {
        d for d in (_device(folder / n) for n in ("encoder.json", "clicks.json", "train_step.json")) if d
    }
    return f"device: {', '.join(sorted(devices)) or 'unknown'}\n" + "\n".join(lines)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _device(path: Path) -> str | None:
    data = _read(path)
    return data.get("device") if data else None


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.1f}" if seconds is not None else "-"


def _verdict(met: bool) -> str:
    return " met" if met else " NOT met"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    text = table(parser.parse_args(argv).folder)
    print(text)
    return text


if __name__ == "__main__":
    main()
