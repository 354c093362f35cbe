"""Image-encoder speed and memory: sammoe vs the official SAM-Med3D encoder (medim), same run, same input.

    python benchmarks/encoder.py                      # CPU, fp32, batch 1, vit_b_ori at 128^3
    python benchmarks/encoder.py --device cuda --dtype bf16 --batch 1 8 32 [--compile] [--json out.json]
    python benchmarks/encoder.py --smoke                # one CPU pass of each at 64^3 (the test suite)
    python benchmarks/encoder.py --cpu-capability avx2  # as an AVX2 CPU (benchmarks/README.md)

Each implementation runs in its own subprocess so that its peak memory (RSS on CPU, allocator peak on GPU)
is its own. Both get identical random weights (every constant-initialised parameter randomised) and the
identical input; the parent prints both medians, the ratio and the max abs difference relative to the
output scale. With --compile, our encoder is timed eager and compiled (one compilation per batch size,
inside the warm-up) in the same run. medim is a test dependency (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

import machine  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def config(size: int):
    """vit_b_ori (the turbo architecture), for inputs of side `size` (128 as released; 64 for the smoke)."""
    import dataclasses

    from sammoe.model.sam3d import PRESETS

    return dataclasses.replace(PRESETS["vit_b_ori"], image_size=size)


def random_state_dict(seed: int, size: int = 128) -> dict[str, torch.Tensor]:
    """Turbo-shaped encoder weights where positional tables and norms are random too."""
    from sammoe.model.randomize import randomize_constant_init
    from sammoe.model.sam3d import SamMed3D

    torch.manual_seed(seed)
    encoder = randomize_constant_init(SamMed3D(config(size)).image_encoder, seed + 1)
    return encoder.state_dict()


def build(impl: str, size: int = 128) -> torch.nn.Module:
    if impl == "ours":
        from sammoe.model.sam3d import SamMed3D

        return SamMed3D(config(size)).image_encoder
    from medim.models.sam_med3d import ImageEncoderViT3D

    return ImageEncoderViT3D(
        img_size=size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        mlp_ratio=4,
        out_chans=384,
        qkv_bias=True,
        norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6),
        use_rel_pos=True,
        window_size=14,
        global_attn_indexes=[2, 5, 8, 11],
    )


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build(args.impl, args.image_size)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model = model.to(device).eval()
    if args.compile:
        model = torch.compile(model, dynamic=False)  # one specialised graph per batch size
    base = torch.load(args.input, weights_only=True)
    results = {}
    for batch in args.batch:
        image = base.repeat(batch, 1, 1, 1, 1).to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32"),
        ):
            for i in range(args.warmup + args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = model(image)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= args.warmup:
                    times.append(time.perf_counter() - start)
        peak = (
            torch.cuda.max_memory_allocated() / 2**20
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )
        results[batch] = {"median_s": statistics.median(times), "runs_s": times, "peak_mib": peak}
        torch.save(out[:1].float().cpu(), f"{args.output}.{batch}")
    Path(args.output).write_text(json.dumps(results))


def run_impl(impl: str, args: argparse.Namespace, tmp: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--weights", str(tmp / "w.pt")]
    cmd += ["--input", str(tmp / "x.pt"), "--output", str(tmp / impl), "--device", args.device]
    cmd += ["--dtype", args.dtype, "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads), "--batch", *map(str, args.batch)]
    cmd += ["--image-size", str(args.image_size)]
    cmd += ["--compile"] if impl == "compiled" else []
    subprocess.run(cmd, check=True)
    return {int(k): v for k, v in json.loads((tmp / impl).read_text()).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--compile", action="store_true", help="also time our encoder under torch.compile")
    parser.add_argument("--skip-official", action="store_true", help="time ours only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--worker", choices=["ours", "compiled", "official"], help=argparse.SUPPRESS)
    for name in ("--weights", "--input", "--output"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=128, help="input side (the release: 128)")
    parser.add_argument("--smoke", action="store_true", help="CPU, 64^3, batch 1, one repeat, no warm-up")
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.repeats, args.warmup, args.compile = "cpu", [1], 1, 0, False
        args.image_size = 64
    if args.worker:
        args.impl = args.worker
        args.compile = args.worker == "compiled"
        worker(args)
        return
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return
    info = machine.describe(__file__, argv, threads=args.threads)  # the workers' thread count
    print(machine.header(info))

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        size = args.image_size
        torch.save(random_state_dict(0, size), tmp / "w.pt")
        torch.save(
            torch.randn(1, 1, size, size, size, generator=torch.Generator().manual_seed(1)), tmp / "x.pt"
        )
        runs = {
            impl: run_impl(impl, args, tmp) for impl in ("ours", "compiled", "official") if wanted(impl, args)
        }
        rows = summarise(runs, args, tmp)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"vit_b_ori image encoder, {args.image_size}^3, {where}, dtype={args.dtype}, threads={args.threads}, "
        f"median of {args.repeats} after {args.warmup} warm-up; seconds per volume"
    )
    print(
        f"{'batch':>5} {'official':>9} {'ours':>9} {'compiled':>9} {'speed-up':>9} {'compiled':>9} "
        f"{'max|diff|/scale':>16} {'peak MiB off/ours/comp':>23}"
    )
    for row in rows:
        times = [_num(row.get("official_s")), _num(row["ours_s"]), _num(row.get("compiled_s"))]
        ratios = [_ratio(row.get("speedup")), _ratio(row.get("speedup_compiled"))]
        print(
            f"{row['batch']:>5} {' '.join(times)} {' '.join(ratios)} "
            f"{_num(row.get('rel_diff'), '>16.2e')} {row['peak_mib']:>23}"
        )
    if args.json:
        result = {"device": where, "dtype": args.dtype, "batches": rows, "machine": info}
        args.json.write_text(json.dumps(result, indent=1))
    return rows


def wanted(impl: str, args: argparse.Namespace) -> bool:
    return (
        impl == "ours"
        or (impl == "compiled" and args.compile)
        or (impl == "official" and not args.skip_official)
    )


def summarise(runs: dict, args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Per batch: seconds per volume of each implementation, ratios against the official encoder, and how
    closely they agree."""
    rows = []
    for batch in args.batch:
        row = {"batch": batch}
        for impl, result in runs.items():
            row[f"{impl}_s"] = result[batch]["median_s"] / batch
        if "official" in runs:
            reference = torch.load(tmp / f"official.{batch}", weights_only=True)
            ours = torch.load(tmp / f"ours.{batch}", weights_only=True)
            row["rel_diff"] = ((reference - ours).abs().max() / reference.abs().max()).item()
            row["speedup"] = row["official_s"] / row["ours_s"]
            if "compiled" in runs:
                row["speedup_compiled"] = row["official_s"] / row["compiled_s"]
        row["peak_mib"] = "/".join(
            f"{runs[impl][batch]['peak_mib']:.0f}" if impl in runs else "-"
            for impl in ("official", "ours", "compiled")
        )
        rows.append(row)
    return rows


def _num(value: float | None, spec: str = ">9.4f") -> str:
    return format(value, spec) if value is not None else format("-", spec[:3].rstrip(".") or ">9")


def _ratio(value: float | None) -> str:
    return f"{value:>8.1f}x" if value is not None else f"{'-':>9}"


if __name__ == "__main__":
    main()
