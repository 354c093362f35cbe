"""`sammoe segment` speed: one target vs 10 targets on one volume (cached embedding vs re-encoding), and the
latency of one refinement click after the first encode.

    python benchmarks/segment.py                                   # CPU, tiny preset, colin27
    python benchmarks/segment.py --preset vit_b_ori --device cuda [--compile] [--modes clicks]
    python benchmarks/segment.py --smoke                           # tiny sizes, one repeat (the test suite)
    python benchmarks/segment.py --modes official --cpu-capability avx2   # as an AVX2 CPU (README.md)

Whole-command times run `sammoe segment` in this process (model load, read, resample, encode, decode, inverse,
write; Python start-up and imports excluded): 1 target, then 10 targets whose first clicks lie within a few mm
of each other, once sharing one encoded ROI (`--share-roi 0.125`) and once with `--share-roi 0` (the
default: every target its own crop, so 10 encodes). The click mode times, on a warm model, the first encode,
one decoder step on the cached embedding (the refinement click as the model sees it) and `Predictor.add_click`
end to end (decoder + upsample + mapping back to the input grid). Weights are the preset's seeded random
initialisation: speed does not depend on them, but random decoders predict foreground everywhere, so the
sliding window (which follows the mask) is switched off. Medians of --repeats runs; ratios are from the same
run. The CT-sized first click and refinement are benchmarks/ct_click.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/official.py, benchmarks/machine.py

import machine  # noqa: E402

COLIN = Path(__file__).resolve().parents[1] / "sammoe" / "assets" / "colin27" / "ch2.nii.gz"  # shipped copy
PUTAMEN_L_RAS = np.array([-24.9, 3.9, 2.4])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_image(folder: Path, shape=(181, 217, 181)) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(0)
    array = rng.normal(100, 20, size=shape).astype(np.float32)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-90, -125, -71]
    path = folder / "synthetic.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def targets_file(folder: Path, n: int) -> Path:
    rng = np.random.default_rng(1)
    offsets = np.concatenate([np.zeros((1, 3)), rng.uniform(-6.0, 6.0, size=(n - 1, 3))])
    targets = [{"name": f"t{i}", "points": [list(PUTAMEN_L_RAS + off)]} for i, off in enumerate(offsets)]
    path = folder / f"clicks_{n}.json"
    path.write_text(json.dumps({"space": "ras", "targets": targets}))
    return path


def time_command(argv: list[str], repeats: int) -> float:
    from sammoe.cli.segment import main

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = main([*argv, "--overwrite", "--quiet"])
        times.append(time.perf_counter() - start)
        if rc != 0:
            raise SystemExit(f"sammoe segment failed with status {rc}")
    return statistics.median(times)


def bench_command(args, image: Path, ckpt: Path, folder: Path) -> None:
    base = ["--image", str(image), "--checkpoint", str(ckpt), "--experts", "none", "--device", args.device]
    base += ["--out", str(folder / "seg.nii.gz"), "--no-sliding-window"]
    base += ["--compile"] if args.compile else []
    base += ["--no-autocast"] if args.float32 else []
    one = ["--clicks", str(targets_file(folder, 1))]
    ten = ["--clicks", str(targets_file(folder, 10))]
    time_command(base + one, 1)  # warm-up: caches, allocator, lazy imports
    rows = [
        ("1 target", time_command(base + one, args.repeats), 1),
        (
            "10 targets, cached embedding",
            time_command(base + ten + ["--share-roi", "0.125"], args.repeats),
            1,
        ),
        ("10 targets, re-encoding", time_command(base + ten + ["--share-roi", "0"], args.repeats), 10),
    ]
    print(f"\nwhole command ({args.preset}, {args.device}, image {image.name}), median of {args.repeats}:")
    print(f"  {'case':32s} {'encodes':>7s} {'seconds':>8s} {'vs 1 target':>11s}")
    for name, seconds, encodes in rows:
        print(f"  {name:32s} {encodes:7d} {seconds:8.3f} {seconds / rows[0][1]:10.2f}x")
    print(f"  re-encoding / cached (10 targets): {rows[2][1] / rows[1][1]:.2f}x")


def bench_clicks(args, image: Path, ckpt: Path) -> dict:
    from sammoe.inference.predictor import Predictor, Target

    pred = Predictor.load(
        ckpt,
        experts="none",
        device=args.device,
        compile=args.compile,
        use_sliding_window=False,
        autocast=False if args.float32 else "auto",
    )
    device = pred.device
    vol = pred.set_image(image)
    click = np.linalg.inv(vol.affine) @ np.append(PUTAMEN_L_RAS, 1.0)
    click = click[:3]
    # first encode (cold ROI), repeated on fresh images of the same volume
    encodes = []
    for _ in range(args.repeats + 1):
        pred.set_image(vol)
        sync(device)
        start = time.perf_counter()
        pred.predict(Target([click]))
        sync(device)
        encodes.append(time.perf_counter() - start)
    first = statistics.median(encodes[1:])
    state = pred._states[0]
    entry = state.entry
    rng = np.random.default_rng(0)
    extra = click + rng.uniform(-5, 5, size=(args.clicks, 3))
    # decoder step on the cached embedding: what one refinement click costs the model
    pts = np.concatenate([[click], extra])
    roi_pts = np.floor(entry.roi.input_to_roi(pts) + 0.5).astype(np.float32)
    labels = np.ones(len(pts), dtype=np.int64)
    steps = []
    low = state.low
    for k in range(2, len(pts) + 1):
        sync(device)
        start = time.perf_counter()
        low, *_ = pred._decoding.decode(entry, roi_pts[None, :k], labels[None, :k], low)
        sync(device)
        steps.append(time.perf_counter() - start)
    step = statistics.median(steps[1:])
    clicks = []
    for p in extra:
        sync(device)
        start = time.perf_counter()
        pred.add_click(0, p, positive=True)
        sync(device)
        clicks.append(time.perf_counter() - start)
    click_ms = statistics.median(clicks[1:])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\nper-click latency ({args.preset}, {name}, autocast {'bf16' if pred.autocast else 'off'}):")
    print(f"  first click (crop + encode + decode + inverse): {first * 1e3:9.2f} ms")
    print(
        f"  refinement, decoder step on cached embedding:   {step * 1e3:9.2f} ms  (goal <= 5 ms on H100/H200)"
    )
    print(f"  refinement, add_click end to end:               {click_ms * 1e3:9.2f} ms")
    print(f"  first click / refinement step: {first / step:.1f}x")
    return {
        "preset": args.preset,
        "device": name,
        "autocast": "bf16" if pred.autocast else "off",
        "first_click_ms": first * 1e3,
        "refinement_step_ms": step * 1e3,
        "add_click_ms": click_ms * 1e3,
    }


def bench_official(args, image: Path, ckpt: Path) -> dict:
    """Ours (the Predictor, automatic precision) against the official pipeline (torchio + medim, float32 as
    the official inference runs) on the same image, clicks and weights, in this process."""
    from official import OfficialPipeline, official_modules

    from sammoe.inference.predictor import Predictor, Target
    from sammoe.loading import load_backbone

    autocast = False if args.float32 else "auto"
    ours = Predictor.load(ckpt, experts="none", device="cpu", use_sliding_window=False, autocast=autocast)
    theirs = OfficialPipeline(official_modules(load_backbone(ckpt)), crop=ours.size)
    volume = ours.set_image(image)
    click = (np.linalg.inv(volume.affine) @ np.append(PUTAMEN_L_RAS, 1.0))[:3]
    rng = np.random.default_rng(1)
    clicks = [click] + [click + off for off in rng.uniform(-6.0, 6.0, size=(9, 3))]
    refine_at = click + np.array([1.0, 0.0, 0.0])
    t: dict[str, list[float]] = {}

    def timed(key, fn, *fn_args):
        start = time.perf_counter()
        out = fn(*fn_args)
        t.setdefault(key, []).append(time.perf_counter() - start)
        return out

    # warm-up, untimed: lazy imports, allocator pools and oneDNN's kernels on first use, for both pipelines
    ours.predict(Target([click]))
    ours.add_click(0, refine_at)
    theirs.first_click(theirs.open(image), click)
    for _ in range(args.repeats):
        timed("ours_open", ours.set_image, image)
        timed("ours_first", ours.predict, Target([click]))
        for _ in range(args.clicks):
            timed("ours_refine", ours.add_click, 0, refine_at)
        subject = timed("official_open", theirs.open, image)
        _, state = timed("official_first", theirs.first_click, subject, click)
        roi_click = list(np.asarray(state.points[0]) + np.array([1.0, 0.0, 0.0]))
        for _ in range(args.clicks):
            timed("official_refine", theirs.refine, state, roi_click)
    ours.set_image(image)
    timed("ours_ten", ours.predict, [Target([c]) for c in clicks])
    timed("official_ten", lambda: [theirs.first_click(subject, c) for c in clicks])
    m = {k: statistics.median(v) for k, v in t.items()}
    m["ours_open_first"] = m["ours_open"] + m["ours_first"]
    m["official_open_first"] = m["official_open"] + m["official_first"]
    rows = [
        ("open volume", "open"),
        ("first click (crop, encode, decode, map back)", "first"),
        ("open + first click", "open_first"),
        ("refinement click", "refine"),
        ("10 targets (after open)", "ten"),
    ]
    print(
        f"\nsammoe vs the official pipeline ({args.preset}, CPU, {torch.get_num_threads()} threads, sammoe "
        f"{ours.info['precision']}, official float32, image {image.name}); median of {args.repeats} "
        f"({args.clicks} refinement clicks each):"
    )
    print(f"  {'step':46s} {'official s':>10s} {'sammoe s':>9s} {'official/sammoe':>15s}")
    for label, key in rows:
        a, b = m[f"official_{key}"], m[f"ours_{key}"]
        print(f"  {label:46s} {a:10.3f} {b:9.3f} {a / b:14.1f}x")
    goals = [
        (
            "open + first click >= 15x faster than official",
            m["official_open_first"] / m["ours_open_first"] >= 15,
        ),
        ("refinement <= 1/15 of our first click", m["ours_refine"] <= m["ours_open_first"] / 15),
        ("10 targets <= 2x one target", m["ours_ten"] <= 2 * m["ours_first"]),
    ]
    for goal, met in goals:
        print(f"  goal: {goal}: {'met' if met else 'NOT met'}")
    return m


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "vit_b_ori"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image", type=Path, default=None, help="NIfTI (default: colin27, else synthetic)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=10, help="refinement clicks timed in click mode")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)"
    )
    parser.add_argument(
        "--modes", nargs="+", default=["command", "clicks"], choices=["command", "clicks", "official"]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny preset, small synthetic image, 1 repeat")
    parser.add_argument("--json", type=Path, default=None, help="also write the click latencies here")
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return
    if args.smoke:
        args.preset, args.repeats, args.clicks, args.device = "tiny", 1, 3, "cpu"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine.describe(__file__, argv)
    print(machine.header(info))
    args.float32 = machine.float32_as_emulated(info)
    if args.float32:
        print("  so sammoe runs float32 here (--no-autocast), the automatic choice on the emulated CPU")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.smoke:
            image = synthetic_image(folder, (120, 140, 110))  # holds the benchmark click (RAS)
        else:
            image = args.image or (COLIN if COLIN.is_file() else synthetic_image(folder))
        from sammoe.loading import load_backbone, save_backbone

        ckpt = save_backbone(load_backbone(None, args.preset), folder / f"{args.preset}.safetensors")
        if "command" in args.modes:
            bench_command(args, image, ckpt, folder)
        if "official" in args.modes:
            bench_official(args, image, ckpt)
        if "clicks" in args.modes:
            result = bench_clicks(args, image, ckpt)
            result["machine"] = info
            if args.json:
                args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
