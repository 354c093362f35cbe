"""The demo's report: what it measured, in markdown, from this run's numbers only."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sammoe.eval.claims import class_dice, composition_steps
from sammoe.eval.protocols import BBOX_PROTOCOL, CLICK_PROTOCOL
from sammoe.eval.report import render_markdown
from sammoe.eval.results import EvalRow

DISCLAIMER = (
    "This is a synthetic demonstration with a tiny model (0.7 M parameters, 64^3 crops): phantoms stand in "
    "for CT scans, the foundation model was pretrained on their general structures only, and each expert "
    "is its decoder finetuned on one task structure. The Colin27 table evaluates the same models on a real "
    "T1 MRI that the tiny model never saw (no MRI was in its training data), whatever it shows."
)

GPU_RECIPE = """To run the same pipeline for real (GPU, SAM-Med3D turbo weights, your data in the nnU-Net v2
layout):
1. finetune one expert per task: `sammoe fit --config configs/finetune.yaml` with
   `model.init_args: {preset: vit_b_ori, checkpoint: /path/to/sam_med3d_turbo.pth, trainable: decoder}`,
   `data: {class_path: sammoe.lit.datamodule.SegDataModule, init_args: {roots: [/data/Dataset001_X],
   classes: [...], crop_size: 128, spacing: 1.5}}`, `trainer: {accelerator: gpu, devices: 1,
   precision: bf16-mixed}`;
2. package and install it: `sammoe experts package --checkpoint runs/.../decoder.safetensors --name NAME
   --out pkg && pip install ./pkg`;
3. train the gate on a mix of every task's data and general data: `sammoe fit --config configs/gate.yaml`
   with the same model/trainer overrides and `data.init_args.roots` listing all datasets;
4. evaluate: `sammoe test --config configs/evaluate.yaml` (Dice/NSD at 1/3/5/10 clicks on the original
   grid)."""


def composition_markdown(
    steps: Sequence[tuple[list[str], Sequence[EvalRow]]],
) -> tuple[str, list[dict[str, Any]]]:
    """Per-class Dice (1 click) of the foundation and of the MoE after each expert was added, with routing
    accuracy and how many routes of other targets each added expert changed."""
    first_rows = steps[0][1]
    classes = list(dict.fromkeys(r.class_name for r in first_rows))
    header = ["class", "foundation", *(f"+ {experts[-1]}" for experts, _ in steps)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for cls in classes:
        values = [
            class_dice(first_rows, "foundation", cls),
            *(class_dice(rows, "moe", cls) for _, rows in steps),
        ]
        lines.append(f"| {cls} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    summary = composition_steps(steps)
    notes = []
    for step in summary:
        note = f"- + {' + '.join(step['experts'])}: routing accuracy {step['routing_accuracy']:.3f}"
        if step["other_routes_changed"] is not None:
            changed = 100 * step["other_routes_changed"]
            note += f"; routes of the other targets changed by adding it: {changed:.1f}%"
        notes.append(note)
    text = "\n".join(
        [
            "## Experts added one at a time, each routed by its own router (no gate)\n",
            "The MoE after each `pip install`: Dice after 1 click on the same test phantoms, through the "
            "Predictor.\n",
            *lines,
            "",
            *notes,
            "",
        ]
    )
    return text, summary


def summary_markdown(
    report: dict[str, Any],
    official: dict[str, Any],
    colin: dict[str, Any] | None,
    claims: list[str],
    timings: dict[str, float],
    composition: str = "",
) -> str:
    parts = [
        "# sammoe demo: SAM-Med3D-MoE without forgetting\n",
        f"> {DISCLAIMER}\n",
        f"Protocol: {CLICK_PROTOCOL}\n",
        "## What was measured\n",
        *[f"- {line}" for line in claims],
        "",
        render_markdown(
            report,
            title="Phantom test set, click-centred through the Predictor (held-out phantoms)",
            chart="dice.png",
        ),
        render_markdown(
            official,
            title="The same phantoms, official ground-truth-box crop (for comparison with published numbers "
            "only)",
        ),
        f"{BBOX_PROTOCOL}\n",
    ]
    if composition:
        parts.append(composition)
    if colin is not None:
        parts.append(
            render_markdown(
                colin, title="Real MRI: Colin27 T1 with the AAL atlas (the tiny model never saw MRI)"
            )
        )
    parts += [
        "## Timings\n",
        *[f"- {name}: {seconds:.0f} s" for name, seconds in timings.items()],
        "",
        "## Running it for real\n",
        GPU_RECIPE,
        "",
    ]
    return "\n".join(parts)
