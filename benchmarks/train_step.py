"""Training-step speed and peak memory: sammoe vs a straightforward implementation on the official modules.

    python benchmarks/train_step.py                                   # CPU, fp32, vit_b_ori, batch 2
    python benchmarks/train_step.py --device cuda --dtype bf16 --batch 2 --modes sft gate all
    python benchmarks/train_step.py --smoke                            # tiny sizes (the test suite)
    python benchmarks/train_step.py --cpu-capability avx2              # as an AVX2 CPU (benchmarks/README.md)

One step is the official SAM-Med3D interaction (11 decoder iterations, error-region clicks, previous logits
fed back, two point-free iterations, DiceCE summed, AdamW) in three modes:

- `sft`: expert finetuning, image encoder + prompt encoder frozen (encoder under no_grad), decoder trained;
- `gate`: gate training over the foundation decoder + 2 expert decoders (all frozen). `ours` is sammoe's
  GateTraining step (encode once, the gate reads 16 random first clicks per target: it only ever reads the
  first positive click); `official` is the straightforward port: the 11-iteration interaction through the MoE,
  routed to the task expert, with the gate's cross-entropy at every iteration;
- `all`: everything trained (the official `train.py` setting: prompt/decoder at 0.1 x lr).

`ours` runs sammoe's modules; `official` runs the same loop on medim's SAM-Med3D modules (numerically the
official code: image encoder with the official window padding, prompt encoder, mask decoder) loaded with the
same weights. Each implementation runs in its own subprocess so that its peak memory (RSS on CPU, allocator
peak on GPU) is its own; the parent prints both medians and their ratio. medim is a test dependency.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/official.py, benchmarks/machine.py

import machine  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GATE_CLICKS_PER_TARGET = 16  # configs/gate.yaml clicks_per_target


def build_backbone(impl: str, preset: str):
    """A SamMed3D; for `official` its three modules are medim's, with the same (seeded) weights."""
    from sammoe.model.sam3d import PRESETS, SamMed3D

    torch.manual_seed(0)
    ours = SamMed3D(PRESETS[preset])
    if impl == "ours":
        return ours
    from official import official_modules

    official = official_modules(ours)
    # The same SamMed3D shell (decode = prompt encoder + decoder), with the official modules inside.
    ours.image_encoder = official.image_encoder
    ours.prompt_encoder = official.prompt_encoder
    ours.mask_decoder = official.mask_decoder
    return ours


def make_step(impl: str, mode: str, preset: str, device: torch.device, iterations: int):
    """(step(image, gt, generator) -> loss, trainable parameter count)."""
    import copy

    from sammoe.data.clicks import next_click_from_error
    from sammoe.interact.rollout import decoder_step, moe_step, training_rollout
    from sammoe.lit.finetune import dice_ce_loss

    backbone = build_backbone(impl, preset).to(device)
    loss_fn = dice_ce_loss("dicece")
    # low-res mask size (4 x the embedding grid); medim's `mask_input_size` attribute holds the grid itself
    low = 4 * (backbone.config.image_size // backbone.config.patch_size)

    if mode == "gate":
        from sammoe.model.moe import SamMoE

        backbone.requires_grad_(False)
        experts = {f"e{i}": copy.deepcopy(backbone.mask_decoder) for i in (1, 2)}
        moe = SamMoE(backbone, experts).to(device)
        moe.freeze_all_but_gate()
        params = list(moe.gate.parameters())
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)

        def step(image, gt, generator):
            target = torch.arange(image.shape[0], device=device) % 3
            with torch.no_grad():
                emb = backbone.image_encoder(image)
            if impl == "ours":  # sammoe's GateTraining step: the gate reads only the first positive click
                empty = torch.zeros_like(gt, dtype=torch.bool)
                logits = []
                for _ in range(GATE_CLICKS_PER_TARGET):
                    points, labels = next_click_from_error(empty, gt.bool(), generator)
                    logits.append(moe.gate_logits(emb, points, labels, image).float())
                logits = torch.cat(logits)
            else:  # straightforward: run the official interaction through the MoE and gate every iteration
                rollout = training_rollout(
                    moe_step(moe, route=target, image=image),
                    emb,
                    gt,
                    None,
                    generator,
                    iterations,
                    low_res_size=low,
                )
                logits = torch.cat([o.gate_logits.float() for o in rollout.outputs])
            loss = torch.nn.functional.cross_entropy(logits, target.repeat(logits.shape[0] // len(target)))
            return loss, optimizer

        return step, params

    frozen = mode == "sft"
    backbone.image_encoder.requires_grad_(not frozen)
    backbone.prompt_encoder.requires_grad_(not frozen)
    if mode == "sft":
        params = list(backbone.mask_decoder.parameters())
        optimizer = torch.optim.AdamW(params, lr=8e-5, weight_decay=0.1)
    else:
        head = [*backbone.prompt_encoder.parameters(), *backbone.mask_decoder.parameters()]
        params = list(backbone.image_encoder.parameters()) + head
        optimizer = torch.optim.AdamW(
            [{"params": list(backbone.image_encoder.parameters()), "lr": 8e-5}, {"params": head, "lr": 8e-6}],
            weight_decay=0.1,
        )

    def step(image, gt, generator):
        if frozen:
            with torch.no_grad():
                emb = backbone.image_encoder(image)
        else:
            emb = backbone.image_encoder(image)
        rollout = training_rollout(
            decoder_step(backbone), emb, gt, loss_fn, generator, iterations, low_res_size=low
        )
        return rollout.loss, optimizer

    return step, params


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    step, params = make_step(args.impl, args.mode, args.preset, device, args.iterations)
    from sammoe.model.sam3d import PRESETS

    size = PRESETS[args.preset].image_size
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(args.batch, 1, size, size, size, generator=gen).to(device)
    gt = torch.zeros(args.batch, 1, size, size, size, device=device)
    lo, hi = size // 4, size // 4 + size // 3
    gt[:, :, lo:hi, lo + 2 : hi + 2, lo - 2 : hi - 2] = 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(args.warmup + args.steps):
        clicks = torch.Generator().manual_seed(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32"):
            loss, optimizer = step(image, gt, clicks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(
        json.dumps(
            {
                "s_per_step": statistics.median(times),
                "peak_gib": peak,
                "loss": float(loss),
                "trainable": sum(p.numel() for p in params),
            }
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="vit_b_ori", choices=["vit_b_ori", "tiny"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=11)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modes", nargs="+", default=["sft", "gate"], choices=["sft", "gate", "all"])
    parser.add_argument("--impls", nargs="+", default=["ours", "official"], choices=["ours", "official"])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--impl", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, batch 1, 2 iterations, 1 step")
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.device, args.batch = "tiny", "cpu", 1
        args.iterations, args.steps, args.warmup = 2, 1, 0
    if args.impl:
        worker(args)
        return
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return
    info = machine.describe(__file__, argv, threads=args.threads)  # the workers' thread count
    print(machine.header(info))
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(
        f"train step: {args.preset}, batch {args.batch}, {args.iterations} iterations, {args.dtype}, "
        f"{where}, {args.threads} threads; median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"{'mode':<6} {'impl':<9} {'s/step':>8} {'peak GiB':>9} {'trainable':>10}")
    everything = {"device": where, "dtype": args.dtype, "batch": args.batch, "modes": {}, "machine": info}
    for mode in args.modes:
        results = everything["modes"][mode] = {}
        for impl in args.impls:
            cmd = [sys.executable, __file__, "--impl", impl, "--mode", mode]
            for key in ("preset", "device", "dtype", "batch", "iterations", "steps", "warmup", "threads"):
                cmd += [f"--{key}", str(getattr(args, key))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{mode:<6} {impl:<9} failed: {proc.stderr.strip().splitlines()[-1]}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results[impl] = res
            print(
                f"{mode:<6} {impl:<9} {res['s_per_step']:8.3f} {res['peak_gib']:9.2f} {res['trainable']:10,d}"
            )
        if len(results) == 2:
            ours, official = results["ours"], results["official"]
            faster = official["s_per_step"] / ours["s_per_step"]
            smaller = official["peak_gib"] / max(ours["peak_gib"], 1e-9)
            print(
                f"{mode:<6} ratio     {faster:7.2f}x faster, "
                f"{smaller:.2f}x less peak memory (official / ours)"
            )
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return everything


if __name__ == "__main__":
    main()
