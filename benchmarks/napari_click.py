"""Click-to-layer latency of the napari plugin on CT-sized volumes, under Xvfb (software OpenGL): a first
click, refinement clicks, undo after 10 clicks, and a second target's first click, next to
`Predictor.add_click` alone on the same image and clicks.

    xvfb-run -a python benchmarks/napari_click.py                    # demo model, CPU, 512x512x60 and x300
    xvfb-run -a python benchmarks/napari_click.py --checkpoint turbo --device cuda   # ViT-B on a GPU
    python benchmarks/napari_click.py --quick                        # tiny volumes, 3 clicks (the test suite)
    python benchmarks/napari_click.py --cpu-capability avx2          # as an AVX2 CPU (benchmarks/README.md)

The volumes are benchmarks/ct_click.py's generated CTs (512 x 512 x N at 0.7 x 0.7 x 5 mm, int16 NIfTI in a
temp folder, not timed). A viewer (shown: Xvfb draws it with Mesa's software GL, as on a remote desktop or
a VM) opens each through the plugin's reader; the widget is docked and the model loaded (not timed). Each
click is a press/release on the clicks layer as napari's canvas delivers it; "click -> layer" stops when the
widget has copied the new mask into the labels layer (the worker ran the model, the GUI thread updated the
layer), "-> drawn" at the canvas's next draw. The first target is clicked at the liver's centre, then
refined --clicks times within 3 mm (alternating positive and negative), its last click undone, and a second
target started at the spleen's centre. The model's threads are the widget's (one core fewer than available
unless --threads); the header names the CPU, torch's CPU capability and the command. Needs an X display:
without DISPLAY the script re-runs itself under xvfb-run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py, benchmarks/ct_click.py

import ct_click  # noqa: E402
import machine  # noqa: E402

QUICK_IN_PLANE, QUICK_SLICES = 96, [8, 16]


def organ_voxel(name: str, slices: int, in_plane: int) -> np.ndarray:
    """An organ's centre of ct_click's generated CT, in voxels (kept inside a small --quick volume)."""
    centre_mm = next(c for tissue, c, _ in ct_click.ORGANS if tissue == name)
    middle = np.array([(in_plane - 1) / 2, (in_plane - 1) / 2, (slices - 1) / 2])
    voxel = np.round(middle + np.asarray(centre_mm) / np.asarray(ct_click.SPACING)) + 0.0
    return np.clip(voxel, 2, np.array([in_plane, in_plane, slices]) - 3)


def refinements(click: np.ndarray, n: int, shape) -> list[tuple[np.ndarray, bool]]:
    points = ct_click.refine_points(click, n)
    return [(np.clip(p, 0, np.asarray(shape) - 1), i % 2 == 1) for i, p in enumerate(points)]


def _loop_until(signal, timeout: float, done) -> bool:
    """Run Qt's event loop until ``signal`` fires and ``done()`` holds, blocking like napari does (polling
    kept the GUI thread busy and slowed the worker's threads on a 2-core machine)."""
    from qtpy.QtCore import QEventLoop, QTimer

    if done():
        return True
    loop = QEventLoop()

    def check(*_):
        if done():
            loop.quit()

    signal.connect(check)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    try:
        loop.exec()
    finally:
        signal.disconnect(check)
    return done()


def _wait(widget, timeout: float = 600.0) -> None:
    if not _loop_until(widget.idle, timeout, lambda: not widget.busy):
        raise TimeoutError("the widget did not finish in time")
    if widget.message:
        raise RuntimeError(widget.message)


def _timed_click(viewer, widget, voxel, positive: bool, canvas) -> tuple[float, float | None]:
    """(click -> labels layer, click -> canvas drawn) in seconds, for one mouse click on the clicks layer."""
    from sammoe.napari.testing import simulate_click

    drawn: list[float] = []
    record = lambda *_: drawn.append(time.perf_counter())  # noqa: E731
    if canvas is not None:
        canvas.events.draw.connect(record)
    start = time.perf_counter()
    simulate_click(viewer, widget.layers.points, voxel, [] if positive else ["Shift"])
    _wait(widget)
    layer = time.perf_counter() - start
    try:
        if canvas is not None:
            _loop_until_drawn(drawn, start + layer, 2.0)
    finally:
        if canvas is not None:
            canvas.events.draw.disconnect(record)
    after = [t for t in drawn if t >= start + layer]
    return layer, (after[0] - start if after else None)


def _loop_until_drawn(drawn: list[float], since: float, timeout: float) -> None:
    from qtpy.QtCore import QCoreApplication, QEventLoop

    deadline = time.perf_counter() + timeout
    while not any(t >= since for t in drawn) and time.perf_counter() < deadline:
        QCoreApplication.processEvents(QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)


def _timed_undo(widget) -> float:
    start = time.perf_counter()
    widget.undo()
    _wait(widget)
    return time.perf_counter() - start


def _direct(path: Path, checkpoint: str, device: str, threads: int, click, clicks) -> list[float]:
    """Predictor.add_click alone (no viewer), same image, clicks and threads: the model's share."""
    import warnings

    import torch

    from sammoe.inference.predictor import Predictor, Target

    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor.load(checkpoint, device=device)
    predictor.set_image(path)
    predictor.predict([Target([click.tolist()], [1], "target")])
    times = []
    for voxel, positive in clicks:
        start = time.perf_counter()
        predictor.add_click(0, voxel.tolist(), positive=positive)
        times.append(time.perf_counter() - start)
    return times


def _load(widget, args) -> None:
    panel = widget.model_panel
    panel.set_checkpoint_file(args.checkpoint)
    if args.checkpoint in ("demo", "turbo"):
        panel.model.setCurrentIndex(max(0, panel.model.findData(args.checkpoint)))
    panel.device.setCurrentText(args.device)
    if args.threads:
        panel.threads.setValue(args.threads)
    widget.load_model()
    _wait(widget)


def bench_case(path: Path, slices: int, in_plane: int, args) -> dict:
    import napari

    viewer = napari.Viewer(show=not args.hidden)
    try:
        viewer.open(str(path), plugin="sammoe")
        _, widget = viewer.window.add_plugin_dock_widget("sammoe", "Segment with clicks")
        _wait(widget)
        _load(widget, args)
        threads = widget.model_panel.threads.value()
        canvas = None if args.hidden else viewer.window._qt_viewer.canvas._scene_canvas
        liver = organ_voxel("liver", slices, in_plane)
        clicks = refinements(liver, args.clicks, (in_plane, in_plane, slices))
        first = _timed_click(viewer, widget, liver, True, canvas)
        refine, model = [], []
        for voxel, positive in clicks:
            refine.append(_timed_click(viewer, widget, voxel, positive, canvas))
            update = widget.last_update
            if update.path != "refine":
                raise RuntimeError(f"a refinement click took the {update.path} path")
            model.append(update.seconds)
        undo = _timed_undo(widget)
        undo_path = widget.last_update.path
        widget.next_target()  # M: a new target after the last
        _wait(widget)
        second = _timed_click(viewer, widget, organ_voxel("spleen", slices, in_plane), True, canvas)
        second_path, encodes = widget.last_update.path, widget.last_update.encodes
    finally:
        viewer.close()
    direct = _direct(path, args.checkpoint, args.device, threads, liver, clicks)
    median = statistics.median

    def drawn(pairs):
        values = [d for _, d in pairs if d is not None]
        return round(1000 * median(values), 1) if values else None

    return {
        "shape": [in_plane, in_plane, slices],
        "threads": threads,
        "clicks": len(clicks),
        "first_click_s": round(first[0], 3),
        "first_click_drawn_s": None if first[1] is None else round(first[1], 3),
        "click_to_labels_ms": round(1000 * median(r for r, _ in refine), 1),
        "click_to_labels_max_ms": round(1000 * max(r for r, _ in refine), 1),
        "click_to_drawn_ms": drawn(refine),
        "session_model_ms": round(1000 * median(model), 1),
        "add_click_alone_ms": round(1000 * median(direct), 1),
        "undo_ms": round(1000 * undo, 1),
        "undo_path": undo_path,
        "second_target_s": round(second[0], 3),
        "second_target_path": second_path,
        "encodes": encodes,
    }


def print_case(case: dict, args) -> None:
    shape = "x".join(map(str, case["shape"]))
    ratio = case["click_to_labels_ms"] / max(case["add_click_alone_ms"], 1e-9)
    drawn = case["click_to_drawn_ms"]
    print(
        f"\nCT {shape}, {args.checkpoint} on {args.device}, {case['threads']} torch thread(s) in the worker"
    )
    print(f"  first click (resample + encode + decode)    {case['first_click_s']:.3f} s")
    print(
        f"  refinement, click -> labels layer (median)  {case['click_to_labels_ms']:.1f} ms  "
        f"(max {case['click_to_labels_max_ms']:.1f} ms; drawn {drawn if drawn is not None else '-'} ms)"
    )
    print(f"  of which the session's model call (median)  {case['session_model_ms']:.1f} ms")
    print(
        f"  Predictor.add_click alone (median)          {case['add_click_alone_ms']:.1f} ms  "
        f"(viewer/alone ratio {ratio:.2f}, goal <= 1.5)"
    )
    undo = f"undo after {case['clicks'] + 1} clicks"
    print(f"  {undo:43s} {case['undo_ms']:.1f} ms  ({case['undo_path']}, goal <= 50 ms)")
    print(
        f"  second target's first click                 {case['second_target_s']:.3f} s  "
        f"({case['second_target_path']}; {case['encodes']} crop(s) encoded in all)"
    )


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="demo", help="demo (default) | turbo | a weights file")
    p.add_argument("--device", default="cpu")
    p.add_argument("--slices", type=int, nargs="+", default=[60, 300], help="generated CT sizes (slices)")
    p.add_argument("--clicks", type=int, default=10, help="refinement clicks timed (median reported)")
    p.add_argument("--threads", type=int, default=0, help="the model's threads (0: the widget's default)")
    p.add_argument("--hidden", action="store_true", help="a hidden viewer (nothing drawn: no draw times)")
    p.add_argument("--quick", "--smoke", action="store_true", help="tiny volumes, 3 clicks: proves it runs")
    p.add_argument("--json", metavar="PATH", help="also write the numbers here")
    machine.add_option(p)
    args = p.parse_args(argv)
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return None
    in_plane = ct_click.IN_PLANE
    if args.quick:
        args.clicks, args.slices, in_plane = 3, QUICK_SLICES, QUICK_IN_PLANE
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            raise SystemExit("napari needs an X display: install Xvfb (apt-get install xvfb) or set DISPLAY")
        screen = ["-s", "-screen 0 1280x1024x24"]
        cmd = [
            "xvfb-run",
            "-a",
            *screen,
            sys.executable,
            __file__,
            *(argv if argv is not None else sys.argv[1:]),
        ]
        raise SystemExit(subprocess.call(cmd))
    info = machine.describe(__file__, argv)
    print(machine.header(info))
    print(f"display {os.environ['DISPLAY']}: {'hidden viewer' if args.hidden else 'viewer drawn by Xvfb'}")
    import nibabel as nib

    cases = []
    with tempfile.TemporaryDirectory() as folder:
        for slices in args.slices:
            array, affine = ct_click.ct_volume(slices, in_plane=in_plane)
            path = Path(folder) / f"ct_{in_plane}x{in_plane}x{slices}.nii.gz"
            nib.save(nib.Nifti1Image(array, affine), str(path))
            cases.append(bench_case(path, slices, in_plane, args))
            print_case(cases[-1], args)
    result = {"checkpoint": args.checkpoint, "device": args.device, "cases": cases, "machine": info}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
