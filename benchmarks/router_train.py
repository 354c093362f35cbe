"""Router and gate training epoch time with and without the trunk-feature cache, in one run on one machine.

    python benchmarks/router_train.py                       # router, vit_b_ori (random weights), 128^3 crops
    python benchmarks/router_train.py --module gate         # the joint gate (configs/gate.yaml's module)
    python benchmarks/router_train.py --preset tiny --cases 24 --epochs 4
    python benchmarks/router_train.py --smoke               # tiny sizes, what the test suite runs
    python benchmarks/router_train.py --cpu-capability avx2 # as an AVX2 CPU (benchmarks/README.md)

Both runs train `RouterTraining` (configs/router.yaml) or `GateTraining` (configs/gate.yaml, over one expert
exported from the same trunk) through a Lightning Trainer on the same generated phantoms, with one fixed
click per target (`click_draws: 1`, so every crop repeats from the second epoch). `uncached` encodes every
crop every step; `cached` reads the features from `FeatureCache` after the first epoch. Speed does not depend
on the weights, so the backbone is the seeded initialisation. Validation is off (the gate's tau tuning
decodes every crop with every decoder, with or without the cache).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

import machine  # noqa: E402


def _data(root: Path, preset: str, cases: int):
    from sammoe.lit.phantom_data import PhantomDataModule

    crop = 64 if preset == "tiny" else 128
    return PhantomDataModule(
        root=str(root / "phantoms"),
        cache_dir=str(root / "preprocess"),
        n_cases=cases,
        n_test=0,
        crop_size=crop,
        batch_size=4,
        flips=False,
        val_fraction=0.0,
        background_clicks=1,
        classes=["spinal_cord"],
        general_classes=["liver", "spleen"],
        click_draws=1,
    )


def warm_preprocessing(root: Path, preset: str, cases: int) -> None:
    """Generate and resample the phantoms once, so that neither timed run pays for it."""
    data = _data(root, preset, cases)
    data.prepare_data()
    data.setup("fit")
    for case, _ in data.train_targets:
        data.cache.load(case)


def _module(kind: str, root: Path, preset: str, cache_dir: Path | None):
    cache = None if cache_dir is None else str(cache_dir)
    if kind == "router":
        from sammoe.lit.router import RouterTraining

        return RouterTraining(
            "spinal_cord",
            {"classes": {"spinal_cord": 5}},
            preset=preset,
            checkpoint="seeded",
            feature_cache=cache,
        )
    from sammoe.lit.finetune import ExpertFinetune
    from sammoe.lit.gate import GateTraining

    decoder = root / "expert" / "decoder.safetensors"
    if not decoder.is_file():
        expert = ExpertFinetune(
            name="spinal_cord", preset=preset, checkpoint="seeded", task={"classes": {"spinal_cord": 5}}
        )
        expert.export(decoder)
    return GateTraining(
        preset=preset,
        checkpoint="seeded",
        expert_files={"spinal_cord": str(decoder)},
        gate_robust_texture=True,
        tune_tau=False,
        feature_cache=cache,
    )


def run(
    root: Path, preset: str, cases: int, epochs: int, cache_dir: Path | None, kind: str = "router"
) -> list[float]:
    """Seconds per training epoch."""
    import lightning as L

    data = _data(root, preset, cases)
    module = _module(kind, root, preset, cache_dir)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            times.append(time.perf_counter() - self.start)

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[Clock()],
        default_root_dir=str(root / "run"),
    )
    trainer.fit(module, datamodule=data)
    return times


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--module", default="router", choices=["router", "gate"])
    parser.add_argument("--preset", default="vit_b_ori", choices=["tiny", "vit_b_ori"])
    parser.add_argument("--cases", type=int, default=4, help="phantom cases (4 targets each)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 2 cases, 2 epochs")
    parser.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return None
    if args.smoke:
        args.preset, args.cases, args.epochs = "tiny", 2, 2
    info = machine.describe(__file__, argv)
    print(machine.header(info))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm_preprocessing(root, args.preset, args.cases)
        uncached = run(root, args.preset, args.cases, args.epochs, None, args.module)
        cached = run(root, args.preset, args.cases, args.epochs, root / "features", args.module)
    later = slice(1, None)
    result = {
        "cpu": info["cpu"],
        "threads": info["threads"],
        "module": args.module,
        "preset": args.preset,
        "crops_per_epoch": args.cases * 4,
        "uncached_epoch_s": uncached,
        "cached_epoch_s": cached,
        "speedup_after_first_epoch": statistics.median(uncached[later]) / statistics.median(cached[later]),
        "machine": info,
    }
    print(
        f"{args.module} training, {args.preset}, {result['crops_per_epoch']} crops per epoch, "
        f"{result['cpu']}, {result['threads']} threads"
    )
    print("epoch   uncached s   cached s")
    for e, (u, c) in enumerate(zip(uncached, cached, strict=False), 1):
        print(f"{e:>5}   {u:>10.2f}   {c:>8.2f}")
    print(f"epochs 2..{args.epochs}: the cache is {result['speedup_after_first_epoch']:.1f}x faster")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
