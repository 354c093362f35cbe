"""A cohort in one `sammoe predict` run vs one `sammoe segment` process per scan: same scans and model.

    python benchmarks/cohort.py                         # 8 CT-sized scans (512x512x60), vit_b_ori, CPU
    python benchmarks/cohort.py --cpu-capability avx2   # the same as an AVX2 CPU (benchmarks/README.md)
    python benchmarks/cohort.py --device cuda --cases 32 --skip-per-process   # cases/min on one GPU
    python benchmarks/cohort.py --smoke                 # the demo model, 2 small scans (the test suite)

The scans are benchmarks/ct_click.py's generated CTs (0.7 x 0.7 x 5 mm, a different noise seed per case),
written as int16 NIfTI with one clicks file each (the liver's centre); not timed. Both sides run as a user
would, as commands in new processes (Python start-up, imports and the model load included, since avoiding
them per scan is the point of a batch run) on the same weights: vit_b_ori with seeded random weights saved
to a file (speed does not depend on them; the sliding window, which follows the predicted mask, is off, as
random decoders predict foreground everywhere), float32 on CPUs, no experts. `--memory-slices 300` first runs
`sammoe predict` on one 512x512x300 scan and reports its peak resident memory (the largest of the process
and its DataLoader worker, from getrusage of the children, and the main process's from its summary).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ct_click.py, benchmarks/machine.py

import machine  # noqa: E402
from ct_click import ct_volume, liver_click  # noqa: E402

SAMMOE = [sys.executable, "-m", "sammoe"]


def write_cases(folder: Path, n: int, slices: int, in_plane: int) -> tuple[Path, Path]:
    import nibabel as nib

    images, prompts = folder / "scans", folder / "prompts"
    images.mkdir(parents=True, exist_ok=True)
    prompts.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        array, affine = ct_volume(slices, seed=i, in_plane=in_plane)
        nib.save(nib.Nifti1Image(array, affine), str(images / f"ct_{i:03d}.nii.gz"))
        click = liver_click(slices, in_plane).tolist()
        document = {"space": "voxel", "targets": [{"name": "liver", "points": [click], "labels": [1]}]}
        (prompts / f"ct_{i:03d}.json").write_text(json.dumps(document))
    return images, prompts


def run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace")
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(
            f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return seconds


def predict_command(images: Path, prompts: Path, out: Path, checkpoint: str, args) -> list[str]:
    command = SAMMOE + ["predict", "--config", "predict", "--data.images", str(images)]
    command += ["--data.prompts", str(prompts), "--data.out", str(out), "--model.checkpoint", checkpoint]
    command += ["--model.experts", "none", "--model.sliding_window", "false"]
    if args.device == "cuda":
        command += ["--trainer.accelerator", "gpu"]
    else:
        command += ["--trainer.accelerator", "cpu", "--model.autocast", "false"]
    return command


def segment_command(image: Path, prompts: Path, out: Path, checkpoint: str, args) -> list[str]:
    command = SAMMOE + ["segment", "--image", str(image), "--clicks", str(prompts), "--out", str(out)]
    command += ["--checkpoint", checkpoint, "--experts", "none", "--no-sliding-window", "--quiet"]
    command += ["--device", args.device] + (["--no-autocast"] if args.device == "cpu" else [])
    return command


def peak_children_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--slices", type=int, default=60)
    parser.add_argument("--in-plane", type=int, default=512)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--memory-slices", type=int, default=300, help="0: no memory run")
    parser.add_argument("--skip-per-process", action="store_true", help="time the batch run only")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--smoke", action="store_true", help="demo model, 2 scans of 256x256x16, no memory run"
    )
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return None
    if args.smoke:
        args.cases, args.slices, args.in_plane, args.memory_slices = 2, 16, 256, 0
        args.device = args.device if torch.cuda.is_available() else "cpu"
    info = machine.describe(__file__, argv)
    print(machine.header(info))
    result: dict = {
        "machine": info,
        "cases": args.cases,
        "shape": [args.in_plane, args.in_plane, args.slices],
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.smoke:
            checkpoint = "demo"
        else:
            from sammoe.loading import load_backbone, save_backbone

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = load_backbone(None, "vit_b_ori")
            checkpoint = str(save_backbone(model, folder / "vit_b_ori.safetensors"))
            del model
        # first: getrusage's children maximum then covers this run alone
        if args.memory_slices:
            big_images, big_prompts = write_cases(folder / "big", 1, args.memory_slices, args.in_plane)
            seconds = run(predict_command(big_images, big_prompts, folder / "big_out", checkpoint, args))
            result["memory_case"] = {
                "shape": [args.in_plane, args.in_plane, args.memory_slices],
                "seconds": round(seconds, 2),
                "peak_rss_mb": round(peak_children_mb(), 1),
                "peak_rss_mb_main_process": max(
                    float(r["peak_rss_mb"]) for r in _summary(folder / "big_out")
                ),
            }
            peak = result["memory_case"]["peak_rss_mb"]
            print(
                f"one {args.in_plane}x{args.in_plane}x{args.memory_slices} scan: {seconds:.1f} s, peak "
                f"resident memory {peak:.0f} MiB (the largest of the run's processes)"
            )
        images, prompts = write_cases(folder / "cohort", args.cases, args.slices, args.in_plane)
        shape = f"{args.in_plane}x{args.in_plane}x{args.slices}"
        print(f"{args.cases} scans of {shape}, model {Path(checkpoint).name}")
        batch = run(predict_command(images, prompts, folder / "batch", checkpoint, args))
        result["batch_s"] = round(batch, 2)
        result["cases_per_min"] = round(args.cases / batch * 60, 2)
        rate = result["cases_per_min"]
        print(f"sammoe predict, {args.cases} scans in one run: {batch:.1f} s ({rate:.1f} cases/min)")
        if not args.skip_per_process:
            total = 0.0
            for scan in sorted(images.iterdir()):
                case = scan.name.split(".")[0]
                out = folder / "single" / f"{case}.nii.gz"
                total += run(segment_command(scan, prompts / f"{case}.json", out, checkpoint, args))
            result["per_process_s"] = round(total, 2)
            result["ratio"] = round(total / batch, 2)
            for scan in sorted((folder / "single").iterdir()):
                same = np.array_equal(_labels(scan), _labels(folder / "batch" / scan.name))
                result.setdefault("same_label_maps", True)
                result["same_label_maps"] &= same
            print(
                f"sammoe segment, one process per scan: {total:.1f} s; batch is {result['ratio']:.2f}x "
                f"faster; same label maps: {result['same_label_maps']}"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _summary(out: Path) -> list[dict]:
    import csv

    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


if __name__ == "__main__":
    main()
