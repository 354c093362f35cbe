"""Rebuild the example expert plugins under experts/ from finetuned checkpoints (same inputs, same bytes).

    make experts-train     # finetunes both experts on the shipped foundation model, then runs this script:
    python experts/build_examples.py \\
        --checkpoint spinal_cord=runs/experts/spinal_cord/expert/decoder.safetensors \\
        --checkpoint textured_lesion=runs/experts/textured_lesion/expert/decoder.safetensors

Each checkpoint is anything `sammoe experts package` accepts: the decoder .safetensors with the .json
sidecar that `ExpertFinetune` exports (task, backbone fingerprint, provenance with the validation Dice), or
a Lightning .ckpt. Each project is written next to the old one and then swapped in; `--out-dir` writes
elsewhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The phantom task classes (sammoe/data/phantoms.py) the examples are finetuned on (configs/experts/*.yaml).
EXAMPLES = {
    "spinal_cord": "SAM-Med3D tiny expert decoder for the spinal cord (a thin tube) on phantom volumes",
    "textured_lesion": "SAM-Med3D tiny expert decoder for a lesion defined by texture, not brightness, "
    "inside the liver of phantom volumes",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH", required=True)
    parser.add_argument(
        "--backbone", metavar="CKPT", help="backbone weights (default: the shipped tiny model)"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=HERE, help="where the projects go (default: experts/)"
    )
    args = parser.parse_args(argv)
    checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
    unknown = set(checkpoints) - set(EXAMPLES)
    if unknown:
        parser.error(f"unknown example(s) {sorted(unknown)}; choose from {sorted(EXAMPLES)}")

    from sammoe.publish.package import distribution_name, package_expert

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, checkpoint in sorted(checkpoints.items()):
        with tempfile.TemporaryDirectory() as tmp:
            meta = Path(tmp) / "meta.json"
            meta.write_text(json.dumps({"description": EXAMPLES[name]}))
            fresh = package_expert(checkpoint, name, Path(tmp) / "project", meta=meta, backbone=args.backbone)
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
