"""Rebuild the example expert plugins under experts/ (reproducible: same inputs, same bytes).

    python experts/build_examples.py                        # placeholder weights (NOT finetuned)
    python experts/build_examples.py --checkpoint spinal_cord=runs/sc.ckpt --checkpoint nodules=runs/n.ckpt

With `--checkpoint NAME=PATH` (anything `sammoe experts package` accepts: a Lightning .ckpt, or a decoder
.safetensors with its .json sidecar) the expert is packaged from that finetuned checkpoint. Without it, the
weights are a deterministic perturbation of the seeded `tiny` preset's decoder, labelled
`finetuned: false` in the manifest, until the training pipeline's make target produces real experts.
Each project is written next to the old one and then swapped in; `--out-dir` writes elsewhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRESET = "tiny"
PERTURBATION = 0.05  # relative to each tensor's std

# The phantom task classes (sammoe/data/phantoms.py), with the label values and dataset names that
# configs/experts/*.yaml finetune them with.
EXAMPLES = {
    "spinal_cord": "SAM-Med3D tiny expert decoder for the spinal cord (a thin tube) on phantom volumes",
    "nodules": "SAM-Med3D tiny expert decoder for small round lung nodules on phantom volumes",
}


def task_of(name: str) -> dict:
    from sammoe.data.phantoms import LABELS

    return {"classes": {name: LABELS[name]}, "modality": "CT", "dataset": f"phantom-{name}"}


def placeholder_decoder(name: str, backbone: str | None):
    """The preset decoder plus seeded noise: deterministic, clearly not trained."""
    import torch

    from sammoe.plugins.backbone import load_backbone

    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    state = load_backbone(PRESET, backbone).mask_decoder.state_dict()
    out = {}
    for key, value in sorted(state.items()):
        scale = PERTURBATION * (value.std().item() if value.numel() > 1 else 1.0)
        out[key] = value + scale * torch.randn(value.shape, generator=generator)
    return out


def build(name: str, work: Path, checkpoint: str | None, backbone: str | None) -> tuple[Path, Path]:
    """(checkpoint, meta) to hand to package_expert."""
    meta = {"preset": PRESET, "task": task_of(name), "description": EXAMPLES[name]}
    if checkpoint is None:
        from safetensors.torch import save_file

        ckpt = work / f"{name}.safetensors"
        save_file(placeholder_decoder(name, backbone), str(ckpt))
        meta["provenance"] = {
            "finetuned": False,
            "training_data": "none: placeholder weights",
            "config": {
                "base": f"{PRESET} preset decoder",
                "perturbation": PERTURBATION,
                "seed": "crc32(name)",
            },
            "notes": "NOT finetuned: a deterministic perturbation of the seeded tiny decoder, made by "
            "experts/build_examples.py until the training target exists. Do not use for segmentation.",
        }
        checkpoint = str(ckpt)
    meta_path = work / f"{name}.meta.json"
    meta_path.write_text(json.dumps(meta, indent=2))
    return Path(checkpoint), meta_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--backbone", metavar="CKPT", help="backbone weights (default: seeded tiny preset)")
    parser.add_argument(
        "--out-dir", type=Path, default=HERE, help="where the projects go (default: experts/)"
    )
    parser.add_argument("--only", choices=sorted(EXAMPLES), action="append", help="build only these")
    args = parser.parse_args(argv)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    unknown = set(checkpoints) - set(EXAMPLES)
    if unknown:
        parser.error(f"unknown example(s) {sorted(unknown)}; choose from {sorted(EXAMPLES)}")

    from sammoe.plugins.scaffold import distribution_name, package_expert

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.only or sorted(EXAMPLES):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            ckpt, meta = build(name, work, checkpoints.get(name), args.backbone)
            fresh = package_expert(ckpt, name, work / "project", meta=meta, backbone=args.backbone)
            target = args.out_dir / distribution_name(name)
            staged = args.out_dir / f".{target.name}.new"
            shutil.rmtree(staged, ignore_errors=True)
            shutil.copytree(fresh, staged)
            if target.exists():
                shutil.rmtree(target)
            staged.rename(target)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
