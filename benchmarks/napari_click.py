"""Click-to-update latency of the napari plugin: from a mouse click on the clicks layer to the labels layer
holding the new mask, next to `Predictor.add_click` alone on the same image and clicks.

    xvfb-run -a python benchmarks/napari_click.py                    # demo model, CPU, 20 refinement clicks
    xvfb-run -a python benchmarks/napari_click.py --checkpoint turbo --device cuda   # ViT-B on a GPU
    python benchmarks/napari_click.py --smoke                        # 3 clicks (the test suite)
    python benchmarks/napari_click.py --cpu-capability avx2          # as an AVX2 CPU (benchmarks/README.md)

A hidden viewer opens a phantom through the plugin's reader; the first click (resample + encode) is timed
apart. Each refinement click is a press/release on the clicks layer as napari's canvas delivers it; the clock
stops when the widget has copied the new label map into the labels layer (the worker thread ran the model,
the GUI thread updated the layer). Clicks alternate positive and negative around the target's centre. Needs an
X display (napari cannot render offscreen): without DISPLAY the script re-runs itself under xvfb-run.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

import machine  # noqa: E402


def _clicks(centre: np.ndarray, n: int) -> list[tuple[np.ndarray, bool]]:
    """n refinement clicks within 2 voxels of the centre, alternating positive and negative."""
    offsets = [(1, 0, 0), (0, 1, 0), (-1, 0, 0), (0, -1, 0), (1, 1, 0), (-1, -1, 0), (2, 0, 0), (0, 2, 0)]
    return [(centre + offsets[i % len(offsets)], i % 2 == 0) for i in range(n)]


def _mouse_click(viewer, layer, voxel, negative: bool) -> None:
    from sammoe.napari.testing import simulate_click

    simulate_click(viewer, layer, voxel, ["Shift"] if negative else [])


def _wait(widget, app, timeout: float = 300.0) -> None:
    """Run Qt's event loop until the widget is idle: blocking in the loop like napari does, not polling
    (polling kept the GUI thread busy and slowed the worker's OpenMP threads on a 2-core machine)."""
    from qtpy.QtCore import QEventLoop, QTimer

    if not widget.busy:
        return
    loop = QEventLoop()
    widget.idle.connect(loop.quit)
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    try:
        loop.exec()
    finally:
        widget.idle.disconnect(loop.quit)
    if widget.busy:
        raise TimeoutError("the widget did not finish a click in time")


def _direct(image, affine, checkpoint: str, device: str, centre, clicks) -> list[float]:
    """Predictor.add_click alone (no viewer), same image and clicks: the model's share of the latency."""
    import warnings

    from sammoe.inference.predictor import Predictor, Target

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor.load(checkpoint, device=device)
    predictor.set_image(image, affine)
    predictor.predict([Target([centre.tolist()], [1], "target")])
    times = []
    for voxel, positive in clicks:
        start = time.perf_counter()
        predictor.add_click(0, voxel.tolist(), positive=positive)
        times.append(time.perf_counter() - start)
    return times


def run(args: argparse.Namespace) -> dict:
    import napari
    import nibabel as nib
    from qtpy.QtWidgets import QApplication

    from sammoe.data.phantoms import LABELS, make_phantom_case

    image, label, affine = make_phantom_case(0)
    centre = np.argwhere(label == LABELS[args.target]).mean(0).round()
    clicks = _clicks(centre, args.clicks)
    viewer = napari.Viewer(show=False)
    app = QApplication.instance()
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "phantom.nii.gz"
            nib.save(nib.Nifti1Image(image, affine), str(path))
            viewer.open(str(path), plugin="sammoe")
            _, widget = viewer.window.add_plugin_dock_widget("sammoe", "Segment with clicks")
            widget.model_panel.set_checkpoint_file(args.checkpoint)
            if args.checkpoint in ("demo", "turbo"):
                widget.model_panel.model.setCurrentIndex(
                    max(0, widget.model_panel.model.findData(args.checkpoint))
                )
            widget.model_panel.device.setCurrentText(args.device)
            widget.load_model()
            _wait(widget, app)
            points = widget.layers.points
            start = time.perf_counter()
            _mouse_click(viewer, points, centre, negative=False)
            _wait(widget, app)
            first = time.perf_counter() - start
            if widget.message:
                raise RuntimeError(widget.message)
            latencies, model = [], []
            for voxel, positive in clicks:
                start = time.perf_counter()
                _mouse_click(viewer, points, voxel, negative=not positive)
                _wait(widget, app)
                latencies.append(time.perf_counter() - start)
                update = widget.last_update
                if widget.message or update.path != "refine":
                    raise RuntimeError(widget.message or f"click took the {update.path} path")
                model.append(update.seconds)
            encodes = widget.last_update.encodes
    finally:
        viewer.close()
    direct = _direct(image, affine, args.checkpoint, args.device, centre, clicks)
    median = statistics.median
    return {
        "checkpoint": args.checkpoint,
        "device": args.device,
        "target": args.target,
        "clicks": len(clicks),
        "first_click_s": round(first, 4),
        "click_to_labels_ms": round(1000 * median(latencies), 2),
        "click_to_labels_max_ms": round(1000 * max(latencies), 2),
        "session_model_ms": round(1000 * median(model), 2),
        "add_click_alone_ms": round(1000 * median(direct), 2),
        "encodes": encodes,
        "goal_ms": 150.0,
    }


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="demo", help="demo (default) | turbo | a weights file")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--target", default="kidney_left", help="phantom structure clicked (see sammoe.data.phantoms)"
    )
    p.add_argument("--clicks", type=int, default=20, help="refinement clicks timed (median reported)")
    p.add_argument("--smoke", action="store_true", help="3 clicks: proves the benchmark runs")
    p.add_argument("--json", metavar="PATH", help="also write the numbers here")
    machine.add_option(p)
    args = p.parse_args(argv)
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return None
    if args.smoke:
        args.clicks = 3
    if not os.environ.get("DISPLAY"):
        if shutil.which("xvfb-run") is None:
            raise SystemExit("napari needs an X display: install Xvfb (apt-get install xvfb) or set DISPLAY")
        cmd = [
            "xvfb-run",
            "-a",
            "-s",
            "-screen 0 1280x1024x24",
            sys.executable,
            __file__,
            *(argv or sys.argv[1:]),
        ]
        raise SystemExit(subprocess.call(cmd))
    info = machine.describe(__file__, argv)
    print(machine.header(info))
    result = run(args)
    result["machine"] = info
    ratio = result["click_to_labels_ms"] / max(result["add_click_alone_ms"], 1e-9)
    print(f"napari click -> labels layer ({result['checkpoint']}, {result['device']}, {result['target']}):")
    print(f"  first click (resample + encode + decode)   {result['first_click_s']:.3f} s")
    print(
        f"  refinement, click -> labels layer (median)  {result['click_to_labels_ms']:.1f} ms  "
        f"(max {result['click_to_labels_max_ms']:.1f} ms, goal < 150 ms)"
    )
    print(f"  of which the session's model call (median)  {result['session_model_ms']:.1f} ms")
    print(
        f"  Predictor.add_click alone (median)          {result['add_click_alone_ms']:.1f} ms  "
        f"(viewer/alone ratio {ratio:.2f})"
    )
    print(f"  {result['clicks']} refinement clicks, {result['encodes']} encode(s)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
