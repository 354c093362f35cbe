"""First click and refinement on a CT-sized volume: sammoe's Predictor vs the official pipeline, one run.

    python benchmarks/ct_click.py                           # 512x512x60 and 512x512x300, vit_b_ori, float32
    python benchmarks/ct_click.py --cpu-capability avx2     # the same as an AVX2 CPU (benchmarks/README.md)
    python benchmarks/ct_click.py --image ct.nii.gz --click 250 300 40   # a CT of your own, click in voxels
    python benchmarks/ct_click.py --smoke                   # tiny preset, 8 and 16 slices (the test suite)

The volumes are generated CT-like images (not timed, written as int16 NIfTI in a temp folder): 512x512xN at
0.7 x 0.7 x 5 mm with L/P axes as scanners store them, a body ellipse (fat rim, soft tissue), lungs, liver,
spleen, kidneys, aorta and spine in Hounsfield-like units with 15 HU noise. The click is the liver's centre,
refinement clicks lie within 3 mm of it.

`official` is the official inference path of benchmarks/official.py (the one `segment.py --modes official`
times): torchio opens the image, deep-copies the subject, resamples it to 1.5 mm, ToCanonical, CropOrPad
around the click, ZNormalization, medim's float32 `vit_b_ori`, trilinear upsample, `tio.Resample` back onto
the input grid; a refinement is one decoder step plus the same upsample and resample back. `sammoe` is
`Predictor.set_image` + `predict` (open + first click) and `Predictor.add_click` (refinement), float32 (no
autocast). Both use the same random `vit_b_ori` weights (speed does not depend on them; the sliding window,
which follows the predicted mask, is off as random decoders predict foreground everywhere). Both are warmed
up once on the first volume (lazy imports, allocator, oneDNN kernels). Medians over --repeats runs of open +
first click and over --clicks refinement clicks per run. On the generated CTs, the demo model's liver (a
trained decoder, sliding window on) also times the refinement of a target grown over several crops.
"""

from __future__ import annotations

import argparse
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

IN_PLANE = 512
SPACING = (0.7, 0.7, 5.0)
HU = {"air": -1000, "fat": -100, "soft": 40, "lung": -850, "liver": 60, "spleen": 50, "kidney": 150}
# (tissue, centre mm, radii mm) along the array's axes; z from the volume's middle slice.
ORGANS = [
    ("lung", (-80.0, 10.0, 140.0), (60.0, 75.0, 120.0)),
    ("lung", (80.0, 10.0, 140.0), (60.0, 75.0, 120.0)),
    ("liver", (-65.0, 5.0, -20.0), (75.0, 80.0, 70.0)),
    ("spleen", (85.0, -25.0, -10.0), (30.0, 45.0, 50.0)),
    ("kidney", (-70.0, -60.0, -110.0), (28.0, 38.0, 55.0)),
    ("kidney", (70.0, -60.0, -110.0), (28.0, 38.0, 55.0)),
]
LIVER_CENTRE_MM = np.array([-65.0, 5.0, -20.0])


def ct_volume(slices: int, seed: int = 0, in_plane: int = IN_PLANE) -> tuple[np.ndarray, np.ndarray]:
    """(int16 HU array of shape (in_plane, in_plane, slices), its affine with L/P axes)."""
    rng = np.random.default_rng(seed)
    axis = (np.arange(in_plane, dtype=np.float32) - (in_plane - 1) / 2) * SPACING[0]
    x, y = np.meshgrid(axis, axis, indexing="ij")
    body = (x / 165) ** 2 + (y / 115) ** 2 <= 1
    inner = (x / 153) ** 2 + (y / 103) ** 2 <= 1  # inside a 12 mm fat rim
    spine = np.hypot(x, y + 80)
    base = np.full(x.shape, HU["air"], dtype=np.float32)
    base[body] = HU["fat"]
    base[inner] = HU["soft"]
    base[np.hypot(x - 25, y + 45) <= 12] = 200  # contrast-filled aorta
    base[spine <= 18] = 700  # vertebral cortex around marrow
    base[spine <= 12] = 250
    out = np.empty((in_plane, in_plane, slices), dtype=np.int16)
    for k in range(slices):
        z = (k - (slices - 1) / 2) * SPACING[2]
        plane = base.copy()
        for tissue, (cx, cy, cz), (rx, ry, rz) in ORGANS:
            shrink = 1 - ((z - cz) / rz) ** 2
            if shrink > 0:
                s = float(np.sqrt(shrink))
                plane[inner & (((x - cx) / (rx * s)) ** 2 + ((y - cy) / (ry * s)) ** 2 <= 1)] = HU[tissue]
        plane += rng.normal(0.0, 15.0, plane.shape).astype(np.float32)
        out[..., k] = np.clip(np.rint(plane), -1024, 3071)
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [(in_plane - 1) / 2 * SPACING[0], (in_plane - 1) / 2 * SPACING[1], 0.0]
    affine[2, 3] = -(slices - 1) / 2 * SPACING[2]
    return out, affine


def liver_click(slices: int, in_plane: int = IN_PLANE) -> np.ndarray:
    """The liver's centre in voxel coordinates of ``ct_volume(slices)``."""
    middle = np.array([(in_plane - 1) / 2, (in_plane - 1) / 2, (slices - 1) / 2])
    return np.round(middle + LIVER_CENTRE_MM / np.asarray(SPACING)) + 0.0  # no -0.0


def write_ct(folder: Path, slices: int) -> tuple[Path, np.ndarray, float]:
    """The generated CT as NIfTI in ``folder``, its liver click, and the seconds it took (not timed)."""
    import nibabel as nib

    start = time.perf_counter()
    array, affine = ct_volume(slices)
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    path = folder / f"ct_{IN_PLANE}x{IN_PLANE}x{slices}.nii.gz"
    nib.save(image, str(path))
    return path, liver_click(slices), time.perf_counter() - start


def refine_points(click: np.ndarray, n: int) -> list[np.ndarray]:
    """n clicks within 3 mm of the first (4 voxels in plane, at most 1 slice off)."""
    offsets = [(4, 0, 0), (0, 4, 0), (-4, 0, 0), (0, -4, 0), (3, 3, 1), (-3, -3, -1), (3, -3, 0), (-3, 3, 0)]
    return [click + np.array(offsets[i % len(offsets)], dtype=float) for i in range(n)]


def bench_case(ours, theirs, path: Path, click: np.ndarray, args) -> dict:
    """Open + first click and refinement clicks of both pipelines on one image, alternating, ``--repeats``."""
    from sammoe.inference.predictor import Target

    t: dict[str, list[float]] = {}

    def timed(key, fn, *fn_args):
        start = time.perf_counter()
        out = fn(*fn_args)
        t.setdefault(key, []).append(time.perf_counter() - start)
        return out

    def ours_first():
        ours.set_image(path)
        return ours.predict(Target([click]))

    def official_first():
        return theirs.first_click(theirs.open(path), click)

    for _ in range(args.repeats):
        timed("sammoe_first", ours_first)
        for point in refine_points(click, args.clicks):
            timed("sammoe_refine", ours.add_click, 0, point)
        _, state = timed("official_first", official_first)
        roi_click = np.asarray(state.points[0]) + np.array([1.0, 0.0, 0.0])
        for _ in range(args.clicks):
            timed("official_refine", theirs.refine, state, list(roi_click))
    m = {k: statistics.median(v) for k, v in t.items()}
    shape = tuple(int(n) for n in ours.volume.shape[:3]) if ours.volume is not None else None
    return {
        "image": path.name,
        "shape": shape,
        "voxels": int(np.prod(shape)) if shape else None,
        "official_first_s": m["official_first"],
        "sammoe_first_s": m["sammoe_first"],
        "first_ratio": m["official_first"] / m["sammoe_first"],
        "official_refine_s": m["official_refine"],
        "sammoe_refine_s": m["sammoe_refine"],
        "refine_ratio": m["official_refine"] / m["sammoe_refine"],
        "sammoe_first_over_refine": m["sammoe_first"] / m["sammoe_refine"],
        "runs_s": t,
    }


def grown_refinement(path: Path, click: np.ndarray, clicks: int) -> dict:
    """Refinement of a target that the sliding window grew over neighbouring crops: the demo model (trained,
    so its liver mask reaches its crop's faces and grows), sliding window on, float32. There is no official
    counterpart (the official inference has no sliding window); what matters is that the cost follows the
    windows' box, not the number of slices outside it."""
    import warnings

    from sammoe.inference.predictor import Predictor, Target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the demo model's "synthetic phantoms only" warning
        demo = Predictor.load("demo", device="cpu", autocast=False)
    demo.set_image(path)
    demo.predict(Target([click]))
    times, windows = [], []
    for point in refine_points(click, clicks):
        start = time.perf_counter()
        windows.append(demo.add_click(0, point).windows)
        times.append(time.perf_counter() - start)
    return {"grown_refine_s": statistics.median(times), "grown_windows": int(max(windows))}


def print_case(case: dict, args) -> None:
    shape = "x".join(map(str, case["shape"]))
    print(
        f"\nCT {shape} ({case['voxels'] / 1e6:.1f} M voxels), {args.preset}, float32 both; median of "
        f"{args.repeats} (refinement: median of {args.repeats * args.clicks} clicks)"
    )
    print(f"  {'step':46s} {'official s':>10s} {'sammoe s':>9s} {'official/sammoe':>15s}")
    rows = [("open + first click", "first"), ("refinement click", "refine")]
    for label, key in rows:
        official, ours = case[f"official_{key}_s"], case[f"sammoe_{key}_s"]
        print(f"  {label:46s} {official:10.3f} {ours:9.3f} {official / ours:14.1f}x")
    print(
        f"  sammoe refinement {case['sammoe_refine_s'] * 1e3:.0f} ms; "
        f"sammoe first/refine {case['sammoe_first_over_refine']:.1f}"
    )
    if "grown_refine_s" in case:
        print(
            f"  a target grown over up to {case['grown_windows']} window(s) (demo model, sliding window on): "
            f"refinement {case['grown_refine_s'] * 1e3:.0f} ms"
        )


def markdown(result: dict) -> str:
    lines = [
        f"# CT click benchmark ({result['preset']}, float32, random weights)",
        "",
        machine.markdown(result["machine"]),
        "",
        "| measure | official | sammoe | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for case in result["cases"]:
        shape = "x".join(map(str, case["shape"]))
        lines += [
            f"| CT {shape}: open + first click | {case['official_first_s']:.2f} s | "
            f"{case['sammoe_first_s']:.2f} s | {case['first_ratio']:.1f}x |",
            f"| same CT: one refinement click (median of {result['repeats'] * result['clicks']}) | "
            f"{case['official_refine_s'] * 1e3:.0f} ms | {case['sammoe_refine_s'] * 1e3:.0f} ms | "
            f"{case['refine_ratio']:.1f}x (sammoe first/refine {case['sammoe_first_over_refine']:.1f}) |",
        ]
        if "grown_refine_s" in case:
            lines.append(
                f"| same CT: refining a target grown over <= {case['grown_windows']} window(s) (demo model) "
                f"| | {case['grown_refine_s'] * 1e3:.0f} ms | |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="vit_b_ori", choices=["tiny", "vit_b_ori"])
    parser.add_argument("--slices", type=int, nargs="+", default=[60, 300], help="generated CT sizes")
    parser.add_argument("--image", type=Path, default=None, help="a CT of your own instead (NIfTI)")
    parser.add_argument("--click", type=float, nargs=3, default=None, help="first click in --image voxels")
    parser.add_argument("--repeats", type=int, default=2, help="open + first click runs per volume")
    parser.add_argument("--clicks", type=int, default=5, help="refinement clicks per run")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write a markdown table here")
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 8 and 16 slices, 1 run, 2 clicks")
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if args.image is not None and args.click is None:
        parser.error("--image needs --click I J K (voxel coordinates of the first click)")
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return None
    if args.smoke:
        args.preset, args.slices, args.repeats, args.clicks = "tiny", [8, 16], 1, 2
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine.describe(__file__, argv)
    print(machine.header(info))

    from official import OfficialPipeline, official_modules

    from sammoe.inference.predictor import Predictor, Target
    from sammoe.loading import load_backbone, save_backbone

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = save_backbone(load_backbone(None, args.preset), folder / f"{args.preset}.safetensors")
        ours = Predictor.load(ckpt, experts="none", device="cpu", use_sliding_window=False, autocast=False)
        theirs = OfficialPipeline(official_modules(load_backbone(ckpt)), crop=ours.size)
        if args.image is not None:
            images = [(args.image, np.asarray(args.click))]
        else:
            images = []
            for slices in args.slices:
                path, click, seconds = write_ct(folder, slices)
                print(f"generated {path.name} in {seconds:.1f} s (not timed), click {click.tolist()}")
                images.append((path, click))
        first, click = images[0]
        start = time.perf_counter()
        ours.set_image(first)  # warm-up, untimed: both pipelines once on the first image
        ours.predict(Target([click]))
        ours.add_click(0, refine_points(click, 1)[0])
        theirs.first_click(theirs.open(first), click)
        print(f"warm-up on {first.name}: {time.perf_counter() - start:.1f} s (not timed)")
        cases = []
        for path, click in images:
            cases.append(bench_case(ours, theirs, path, click, args))
            if args.image is None:
                cases[-1].update(grown_refinement(path, click, args.repeats * args.clicks))
            print_case(cases[-1], args)
    result = {
        "machine": info,
        "preset": args.preset,
        "repeats": args.repeats,
        "clicks": args.clicks,
        "spacing_mm": None if args.image else list(SPACING),
        "cases": cases,
    }
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(result))
    return result


if __name__ == "__main__":
    main()
