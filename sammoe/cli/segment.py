"""`sammoe segment`: segment structures in a volume from clicks and write a label map on the input grid.

    sammoe segment --image T1.nii.gz --point 65 128 73 --out seg.nii.gz
    sammoe segment --image CT.nii.gz --point -24.9 3.9 2.4 --space ras --negative-point -10 4 2 \
        --out seg.nii.gz
    sammoe segment --image CT/ --clicks clicks.json --out seg.nii.gz --report report.json --png overlay.png

`--clicks FILE`: {"space": "voxel"|"ras"|"lps", "targets": [{"name": str, "points": [[x, y, z], ...],
"labels": [1, 0, ...], "route": "foundation" | an expert's name (optional: that target's decoder)}]}, or a 3D
Slicer markups file (``*.mrk.json``: one point list per target, see ``sammoe.data.markups``); target i is
written as label value i + 1. Every user error prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import Any

from sammoe.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise ConfigError(f"{message} (see `sammoe segment --help`)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sammoe segment",
        description="Segment structures from clicks (SAM-Med3D / SAM-Med3D-MoE); writes a uint8 label map "
        "with the image's affine. The model: --checkpoint turbo (SAM-Med3D-turbo, after `sammoe weights "
        "fetch turbo`; the default once cached), a weights file, or demo (the phantom-only model shipped "
        "with sammoe), with the installed experts and their routing.",
    )
    p.add_argument(
        "-i",
        "--image",
        required=True,
        metavar="PATH",
        help="NIfTI, NRRD, MHA/MHD or MGZ file, or a DICOM series folder",
    )
    p.add_argument("--channel", type=int, metavar="N", help="volume index of a 4D image")
    g = p.add_argument_group("clicks (inline, one target, or --clicks)")
    g.add_argument(
        "--point", nargs=3, type=float, action="append", metavar=("X", "Y", "Z"), help="positive click"
    )
    g.add_argument(
        "--negative-point",
        nargs=3,
        type=float,
        action="append",
        metavar=("X", "Y", "Z"),
        help="negative click",
    )
    g.add_argument("--space", default=None, help="voxel (indices as stored, default) | ras | lps (world mm)")
    g.add_argument("--name", default="target_1", help="name of the inline target")
    g.add_argument(
        "--clicks",
        metavar="JSON",
        help='{"space": ..., "targets": [{"name", "points", "labels", "route"}]}; a target\'s "route" '
        "(foundation or an installed expert) is its decoder, the others are routed",
    )
    o = p.add_argument_group("outputs")
    o.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="PATH",
        help="label map: .nii / .nii.gz, .seg.nrrd (3D Slicer) or, for a DICOM series input, .dcm "
        "(DICOM-SEG); the last two name each segment after its target and note the expert",
    )
    o.add_argument(
        "--probabilities", metavar="PATH", help="foreground probability per target (float32 NIfTI)"
    )
    o.add_argument(
        "--report",
        metavar="PATH",
        help="JSON report per target: expert, routed_by and routing_probabilities, stability, voxels, ml. "
        "stability (0..1) is how little the mask changes between logit thresholds -1 and +1 (SAM's "
        "stability score): near 1 a sharp, confident boundary; low values often mean a poor mask. It needs "
        "no ground truth and is not a Dice",
    )
    o.add_argument(
        "--png",
        metavar="PATH",
        help="orthogonal slices through each target's first positive click, mask outlined; slices and ticks "
        "are voxel indices of the image as stored",
    )
    o.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    m = p.add_argument_group("model")
    m.add_argument(
        "--checkpoint",
        metavar="MODEL",
        help="turbo (cached by `sammoe weights fetch turbo`; the default when cached) | demo (phantoms "
        "only) | a SamMed3D weights file (.pth / .safetensors)",
    )
    m.add_argument("--preset", default="auto", help="architecture of --checkpoint: auto | tiny | vit_b_ori")
    m.add_argument("--experts", default=None, help="all (default) | none | name,name")
    m.add_argument("--gate", metavar="PATH", help="gate weights for the experts")
    m.add_argument(
        "--routing",
        default="auto",
        choices=["auto", "gate", "routers"],
        help="who routes: a --gate trained over the installed experts, else their own routers (auto), or "
        "insist on one (gate: for the demo model, its shipped gate)",
    )
    m.add_argument(
        "--route",
        metavar="NAME",
        help="force one decoder for every target: foundation or an installed expert's name (default: "
        'routed); a target with its own "route" in the --clicks file keeps it',
    )
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    r.add_argument(
        "--no-autocast",
        action="store_true",
        help="float32 everywhere (default: bf16 autocast on GPUs, and on CPUs with native bf16 for ViT-B "
        "models)",
    )
    r.add_argument("--compile", action="store_true", help="torch.compile the image encoder")
    r.add_argument("--no-sliding-window", action="store_true", help="never grow past the first crop")
    r.add_argument(
        "--share-roi",
        type=float,
        default=0.0,
        metavar="F",
        help="reuse a neighbouring target's ROI within F x crop: faster, but an off-centre crop costs Dice "
        "(kidney_right 0.81 -> 0.66 at 0.125 on held-out phantoms); default 0, every crop on its own click",
    )
    r.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (a status line and bar on a terminal, a stdout line per stage in a log) or summary",
    )
    return p


def _targets(args: argparse.Namespace) -> list[Any]:
    from sammoe.inference.targets import Target

    inline = args.point or args.negative_point
    if args.clicks and inline:
        raise ConfigError(
            "give clicks either inline (--point/--negative-point) or with --clicks FILE, not both"
        )
    if args.clicks:
        if args.space is not None:
            raise ConfigError('--space applies to inline clicks; put "space" in the --clicks file instead')
        from sammoe.inference.targets import read_targets

        return read_targets(args.clicks)
    if not args.point:
        raise ConfigError(
            "no positive click; give --point X Y Z (repeatable; --negative-point for negatives) or "
            "--clicks FILE"
        )
    from sammoe.data.clicks_file import SPACES

    space = args.space or "voxel"
    if space not in SPACES:
        raise ConfigError(f"unknown coordinate system --space {space!r}; use one of {', '.join(SPACES)}")
    points = list(args.point) + list(args.negative_point or [])
    labels = [1] * len(args.point) + [0] * len(args.negative_point or [])
    return [Target(points, labels, args.name, space)]


def _decoders(experts: str | None) -> list[str]:
    """The decoders ``--experts`` can load, known without torch: the foundation and the installed experts
    that are ok (all, or the ones named)."""
    from sammoe.plugins.discovery import discover

    wanted = (experts or "all").strip()
    if wanted in ("none", ""):
        return ["foundation"]
    if wanted == "all":
        return ["foundation", *(r.name for r in discover() if r.ok)]
    return ["foundation", *(name.strip() for name in wanted.split(",") if name.strip())]


def check_routes(targets: list[Any], decoders: list[str], clicks: str | None) -> None:
    """A target's own ``route`` must name one of ``decoders``: else one line naming the file and target."""
    for t in targets:
        if t.route is not None and t.route not in decoders:
            raise ConfigError(
                f"--clicks {clicks}: target {t.name!r} has route {t.route!r}, which is not a decoder of this "
                f"model; choose one of {', '.join(decoders)} (or leave route out to have it routed)"
            )


def _progress(quiet: bool):
    """What the command is doing: on a terminal one rewritten stderr line ("" clears it); in a log or a pipe
    one plain line per stage on stdout, so stderr holds warnings and errors only (a refusal stays one line
    there); nothing with --quiet."""
    if quiet:
        return lambda message: None
    if not sys.stderr.isatty():
        return lambda message: message and print(f"sammoe segment: {message}", flush=True)

    def show(message: str) -> None:
        sys.stderr.write(f"\r\x1b[K{'sammoe segment: ' + message if message else ''}")
        sys.stderr.flush()

    return show


def _per_target(quiet: bool):
    """``Predictor.predict``'s progress: a bar on a terminal, a line per decoded target in a log."""
    if quiet or sys.stderr.isatty():
        return not quiet

    def line(done: int, total: int, result: Any) -> None:
        print(f"sammoe segment: decoded target {done}/{total} ({result.name})", flush=True)

    return line


def _outputs(args: argparse.Namespace) -> Any:
    from sammoe.inference.outputs import SegmentationOutputs

    return SegmentationOutputs(args.out, args.probabilities, args.report, args.png)


def _inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Every file the command reads, for ``check_outputs``: the clicks, the gate, the weights the
    --checkpoint name stands for (turbo's cached file, the demo model and its gate) and every installed
    expert's files (an image's data files are found by ``check_outputs`` itself)."""
    from sammoe import assets
    from sammoe.hub import DEMO, REGISTRY, SEEDED, TURBO, cached
    from sammoe.inference.outputs import expert_inputs

    inputs: dict[str, Any] = {"--clicks": args.clicks, "--gate": args.gate}
    name = TURBO if args.checkpoint is None else args.checkpoint
    if name == DEMO:
        inputs.update({"--checkpoint demo": assets.FOUNDATION_TINY, "the demo gate": assets.GATE_TINY})
    elif name in REGISTRY:
        inputs[f"--checkpoint {name}"] = cached(name)
    elif name != SEEDED:
        inputs["--checkpoint"] = name
    return {**inputs, **expert_inputs()}


def _decoder_phrase(t: Any) -> str:
    """Which decoder segmented the target and why, in words: the foundation is not an expert, and its own
    probability under a router says nothing (the routers vote for their experts only)."""
    if t.routed_by == "forced":
        return f"decoder {t.expert} (forced with --route)"
    if t.routed_by == "chosen":
        return f"decoder {t.expert} (chosen in the clicks file)"
    by = "router" if t.routed_by == "routers" else "gate"
    others = {n: p for n, p in (t.routing_probabilities or {}).items() if n != "foundation"}
    if t.expert == "foundation":
        if not others:
            return "foundation decoder"
        name, p = max(others.items(), key=lambda item: item[1])
        return f"foundation decoder (no expert claimed it; highest {by} probability {p:.2f}, {name})"
    claim = f" ({by} probability {others[t.expert]:.2f})" if t.expert in others else ""
    return f"expert {t.expert}{claim}"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    if args.channel is not None and args.channel < 0:
        raise ConfigError("--channel must be >= 0")
    if not 0 <= args.share_roi <= 0.5:
        raise ConfigError("--share-roi must lie in [0, 0.5] (fraction of the crop size)")
    from sammoe.hub import choose_checkpoint

    targets = _targets(args)
    if any(t.route is not None for t in targets):  # before the model loads: the installed experts' names
        check_routes(targets, _decoders(args.experts), args.clicks)
    outputs = _outputs(args)
    outputs.check(args.image, _inputs(args), overwrite=args.overwrite)  # no output may replace an input
    # the model is resolved once, here, before torch is imported: no model chosen and none cached is one line
    checkpoint = choose_checkpoint(args.checkpoint)
    status = _progress(args.quiet)
    try:
        return _run(args, targets, outputs, checkpoint, status)
    except BaseException:
        status("")  # a terminal's status line is cleared: the error starts a line of its own
        raise


def _run(args: argparse.Namespace, targets: list[Any], outputs: Any, checkpoint: Any, status: Any) -> int:
    """Read, load, decode, write: the checked arguments' work, saying each stage through ``status``."""
    from sammoe.data.io import read_image
    from sammoe.inference.predictor import Predictor
    from sammoe.inference.targets import check_target

    started = time.perf_counter()
    status(f"reading {args.image}")
    volume = read_image(args.image, channel=args.channel)  # a bad image fails before the model loads
    for i, target in enumerate(targets):  # and so does a click outside it
        check_target(target, i, volume)
    status(f"read {'x'.join(map(str, volume.shape))} voxels; loading the model")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.load(
            checkpoint,
            preset=args.preset,
            experts=args.experts,
            gate=args.gate,
            routing=args.routing,
            device=args.device,
            autocast=False if args.no_autocast else "auto",
            compile=args.compile,
            use_sliding_window=not args.no_sliding_window,
            share_roi=args.share_roi,
            route=args.route,
        )
    status("")
    for w in caught:
        print(f"sammoe segment: warning: {w.message}", file=sys.stderr)
    status(f"model loaded on {predictor.device}; decoding {len(targets)} target(s)")
    check_routes(targets, predictor.expert_names, args.clicks)  # an expert may not have loaded
    predictor.set_image(volume)  # read_image checked it: not checked again
    seg = predictor.predict(targets, probabilities=bool(args.probabilities), progress=_per_target(args.quiet))
    report = seg.report()
    report["device"] = str(predictor.device)
    report["seconds"] = round(time.perf_counter() - started, 3)
    status(f"writing {args.out}")
    outputs.write(seg, targets, report, overwrite=args.overwrite)
    status("")
    if not args.quiet:
        for t in seg.targets:
            print(
                f"{t.name}: label {t.value}, {t.voxels} voxels, {t.volume_ml:.2f} ml, {_decoder_phrase(t)}, "
                f"stability {t.stability:.2f}, {t.windows} window(s)"
            )
        print(f"wrote {args.out} ({seg.encodes} encode(s), {report['seconds']:.2f} s on {predictor.device})")
    return 0
