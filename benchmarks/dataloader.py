"""Loader speed: sammoe's cold (first epoch, fills the cache) and warm (cached) pipeline versus torchio's
plain SAM-Med3D pipeline (Resample -> ToCanonical -> CropOrPad(mask) -> ZNormalization -> RandomFlip), same
cases, same workers, same run.

    python benchmarks/dataloader.py                         # 8 phantom cases, 2 workers, 128^3 at 1.5 mm
    python benchmarks/dataloader.py --cases 16 --workers 4 --shape 256 256 96 --spacing 0.8 0.8 2.0
    python benchmarks/dataloader.py --cpu-capability avx2   # as an AVX2 CPU (benchmarks/README.md)

Phantoms are generated first (not timed) at a CT-like resolution. Each pipeline yields one (case, class)
crop per item; the numbers are items per second over one full pass, and the ratios are what to read.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/machine.py

import machine  # noqa: E402


def passes(loader: DataLoader) -> tuple[float, int]:
    """Seconds and items for one full pass over ``loader``."""
    start = time.perf_counter()
    n = 0
    for batch in loader:
        image = batch["image"] if isinstance(batch, dict) else batch
        n += image.shape[0] if hasattr(image, "shape") else len(image)
    return time.perf_counter() - start, n


def torchio_loader(targets, spacing, crop, workers):
    import torchio as tio

    subjects = [
        tio.Subject(image=tio.ScalarImage(case.image), label=tio.LabelMap(case.label), value=ref.value)
        for case, ref in targets
    ]

    class Binarise(tio.Transform):  # the official loader reads per-class binary labels; make them here
        def apply_transform(self, subject):
            subject["label"].set_data((subject["label"].data == subject["value"]).to(torch.int16))
            return subject

    transform = tio.Compose(
        [
            Binarise(),
            tio.Resample(spacing),
            tio.ToCanonical(),
            tio.CropOrPad(mask_name="label", target_shape=(crop,) * 3),
            tio.ZNormalization(masking_method=lambda x: x > 0),
            tio.RandomFlip(axes=(0, 1, 2)),
        ]
    )
    dataset = tio.SubjectsDataset(subjects, transform=transform)

    def collate(items):
        return torch.stack([s["image"].data for s in items])

    return DataLoader(
        dataset, batch_size=1, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(192, 192, 80))
    parser.add_argument(
        "--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.0), help="phantom voxel size (mm)"
    )
    parser.add_argument("--target-spacing", type=float, default=1.5)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--classes", nargs="+", default=["liver"])
    parser.add_argument("--epochs", type=int, default=3, help="timed warm epochs")
    parser.add_argument("--workdir", default=None, help="keep phantoms/cache here (default: a temp folder)")
    parser.add_argument("--smoke", action="store_true", help="2 small phantoms, 64^3 crops, 1 epoch")
    machine.add_option(parser)
    args = parser.parse_args(argv)
    if machine.as_capability(args.cpu_capability, __file__, argv):
        return
    if args.smoke:
        args.cases, args.workers, args.shape, args.crop, args.epochs = 2, 0, (48, 48, 32), 64, 1

    import torchio  # noqa: F401  (imported before the workers fork, for both pipelines alike)

    from sammoe.data.cache import PreprocessCache
    from sammoe.data.datasets import index_dataset
    from sammoe.data.phantoms import make_phantom_dataset
    from sammoe.data.preprocess import Preprocessor
    from sammoe.lit.crop_datasets import CropSettings, TargetDataset

    torch.set_num_threads(1)
    print(machine.header(machine.describe(__file__, argv)))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        t0 = time.perf_counter()
        root = work / f"Dataset950_Bench_{args.cases}_{'x'.join(map(str, args.shape))}"
        if (root / "dataset.json").exists():  # reuse phantoms kept in --workdir
            print(f"reusing phantoms in {root}")
        else:
            make_phantom_dataset(
                root, args.cases, seed=0, shape=args.shape, spacing=args.spacing, overwrite=True
            )
            print(
                f"generated {args.cases} phantoms {tuple(args.shape)} @ {tuple(args.spacing)} mm "
                f"in {time.perf_counter() - t0:.1f} s (not timed below)"
            )
        targets = index_dataset(root).targets(classes=args.classes)
        pre = Preprocessor(target_spacing=args.target_spacing, crop_size=args.crop)
        cache = PreprocessCache(work / f"cache-{time.time_ns()}", pre)
        dataset = TargetDataset(targets, cache, pre, settings=CropSettings(flips=True))

        # Cold: a fresh loader over an empty cache (worker start-up included). Warm and torchio: persistent
        # workers as in training; the first epoch is discarded (start-up; for sammoe it is the cold one),
        # then the mean over --epochs timed epochs.
        cold_s, n = passes(DataLoader(dataset, batch_size=1, num_workers=args.workers))
        warm_loader = DataLoader(
            dataset, batch_size=1, num_workers=args.workers, persistent_workers=args.workers > 0
        )
        passes(warm_loader)
        warm_s = sum(passes(warm_loader)[0] for _ in range(args.epochs)) / args.epochs
        tio = torchio_loader(targets, args.target_spacing, args.crop, args.workers)
        tio_first_s, n_tio = passes(tio)
        tio_s = passes(tio)[0]
        assert n == n_tio == len(targets)

    rate = {
        "sammoe cold (fills cache)": n / cold_s,
        "sammoe warm (cached)": n / warm_s,
        "torchio plain, first epoch": n / tio_first_s,
        "torchio plain, later epoch": n / tio_s,
    }
    print(f"{len(targets)} items, crop {args.crop}^3 at {args.target_spacing} mm, {args.workers} workers")
    for name, value in rate.items():
        print(f"  {name:28s} {value:8.2f} cases/s")
    cold, warm = rate["sammoe cold (fills cache)"], rate["sammoe warm (cached)"]
    print(f"  warm / cold     = {warm / cold:.1f}x (target >= 10x)")
    print(f"  warm / torchio (later epoch) = {warm / rate['torchio plain, later epoch']:.1f}x")
    print(f"  cold / torchio (first epoch) = {cold / rate['torchio plain, first epoch']:.2f}x")


if __name__ == "__main__":
    main()
