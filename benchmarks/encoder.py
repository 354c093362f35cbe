"""Image-encoder speed and memory: sammoe vs the official SAM-Med3D encoder (medim), same run, same input.

    python benchmarks/encoder.py                      # CPU, fp32, batch 1, vit_b_ori at 128^3
    python benchmarks/encoder.py --device cuda --dtype bf16 --batch 1 8 32 [--compile]
    python benchmarks/encoder.py --smoke                # one CPU pass of each (the test suite)

Each implementation runs in its own subprocess so that its peak memory (RSS on CPU, allocator peak on GPU)
is its own. Both get identical random weights (every constant-initialised parameter randomised) and the
identical input; the parent prints both medians, the ratio and the max abs difference relative to the
output scale. medim is a test dependency (`pip install -e '.[test]'`).
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

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def random_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Turbo-shaped encoder weights where positional tables and norms are random too."""
    from sammoe.model.randomize import randomize_constant_init
    from sammoe.model.sam3d import PRESETS, SamMed3D

    torch.manual_seed(seed)
    encoder = randomize_constant_init(SamMed3D(PRESETS["vit_b_ori"]).image_encoder, seed + 1)
    return encoder.state_dict()


def build(impl: str) -> torch.nn.Module:
    if impl == "ours":
        from sammoe.model.sam3d import PRESETS, SamMed3D

        return SamMed3D(PRESETS["vit_b_ori"]).image_encoder
    from medim.models.sam_med3d import ImageEncoderViT3D

    return ImageEncoderViT3D(
        img_size=128, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, out_chans=384,
        qkv_bias=True, norm_layer=lambda d: torch.nn.LayerNorm(d, eps=1e-6), use_rel_pos=True,
        window_size=14, global_attn_indexes=[2, 5, 8, 11],
    )  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = build(args.impl)
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model = model.to(device).eval()
    if args.compile:
        model = torch.compile(model)
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
    cmd = [
        sys.executable, __file__, "--worker", impl, "--weights", str(tmp / "w.pt"), "--input", str(tmp / "x.pt"),
        "--output", str(tmp / impl), "--device", args.device, "--dtype", args.dtype,
        "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads),
        "--batch", *map(str, args.batch),
    ] + (["--compile"] if args.compile and impl == "ours" else [])  # fmt: skip
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
    parser.add_argument("--compile", action="store_true", help="torch.compile our encoder (GPU)")
    parser.add_argument("--skip-official", action="store_true", help="time ours only")
    parser.add_argument("--worker", choices=["ours", "official"], help=argparse.SUPPRESS)
    for name in ("--weights", "--input", "--output"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="CPU, batch 1, one repeat, no warm-up")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.repeats, args.warmup, args.compile = "cpu", [1], 1, 0, False
    if args.worker:
        args.impl = args.worker
        worker(args)
        return

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        torch.save(random_state_dict(0), tmp / "w.pt")
        torch.save(torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(1)), tmp / "x.pt")
        ours = run_impl("ours", args, tmp)
        official = None if args.skip_official else run_impl("official", args, tmp)
        print(
            f"vit_b_ori image encoder, 128^3, device={args.device}, dtype={args.dtype}, threads={args.threads}, "
            f"compile={args.compile}, median of {args.repeats} after {args.warmup} warm-up"
        )
        print(f"{'batch':>5} {'official s/vol':>15} {'ours s/vol':>12} {'speed-up':>9} {'max|diff|/scale':>16} "
              f"{'peak MiB off':>13} {'peak MiB ours':>14}")  # fmt: skip
        for batch in args.batch:
            o = ours[batch]
            line = f"{batch:>5} "
            if official is None:
                line += f"{'-':>15} {o['median_s'] / batch:>12.4f}"
                print(line)
                continue
            r = official[batch]
            a = torch.load(tmp / f"official.{batch}", weights_only=True)
            b = torch.load(tmp / f"ours.{batch}", weights_only=True)
            rel = ((a - b).abs().max() / a.abs().max()).item()
            print(
                f"{batch:>5} {r['median_s'] / batch:>15.4f} {o['median_s'] / batch:>12.4f} "
                f"{r['median_s'] / o['median_s']:>8.1f}x {rel:>16.2e} {r['peak_mib']:>13.0f} {o['peak_mib']:>14.0f}"
            )


if __name__ == "__main__":
    main()
