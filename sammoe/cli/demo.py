"""`sammoe demo`: the paper's claim, end to end, on an embedded default (no downloads, no GPU).

1. a phantom dataset (general + task structures) is generated from `--seed`;
2. the shipped `tiny` foundation model (sammoe/assets, trained on other phantoms by `make foundation`) and
   the installed example experts (`experts/`, finetuned by `make experts-train`) are checked;
3. `sammoe fit --config configs/gate.yaml` trains the gate over them (W&B offline run);
4. `sammoe test --config configs/evaluate.yaml` evaluates foundation, each expert, the MoE and oracle routing
   on the held-out test phantoms, and the same models on the real Colin27 T1 MRI with the AAL atlas;
5. the experts are added one at a time with no gate, routed by their own routers (`routing: routers`), and
   each step is evaluated on the same test phantoms (1 click): what a user gets by `pip install`ing experts;
6. the combined report (report.md, dice.png, report.json) is written and its path printed.

Every number comes from this run. The trainer commands run as subprocesses, exactly as a user types them,
with the run directory as their working directory so that every relative path in the configs lands there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sammoe import assets
from sammoe.errors import ConfigError
from sammoe.eval.protocols import BBOX_PROTOCOL, CLICK_PROTOCOL

CONFIGS = assets.CONFIGS

# Deep grey-matter structures of the AAL atlas (single components that fit a 96 mm crop at 1.5 mm).
COLIN27_CLASSES = {
    "hippocampus_L": 37,
    "amygdala_L": 41,
    "caudate_L": 71,
    "putamen_L": 73,
    "pallidum_L": 75,
    "thalamus_L": 77,
}

DISCLAIMER = (
    "This is a synthetic demonstration with a tiny model (0.7 M parameters, 64^3 crops): phantoms stand in "
    "for CT scans, the foundation model was pretrained on their general structures only, and each expert "
    "is its decoder finetuned on one task structure. The Colin27 table evaluates the same models on a real "
    "T1 MRI that the tiny model never saw (no MRI was in its training data), whatever it shows."
)

GPU_RECIPE = """To run the same pipeline for real (GPU, SAM-Med3D turbo weights, your data in the nnU-Net v2 layout):
1. finetune one expert per task: `sammoe fit --config configs/finetune.yaml` with
   `model.init_args: {preset: vit_b_ori, checkpoint: /path/to/sam_med3d_turbo.pth, trainable: decoder}`,
   `data: {class_path: sammoe.lit.datamodule.SegDataModule, init_args: {roots: [/data/Dataset001_X], classes: [...], crop_size: 128, spacing: 1.5}}`,
   `trainer: {accelerator: gpu, devices: 1, precision: bf16-mixed}`;
2. package and install it: `sammoe experts package --checkpoint runs/.../decoder.safetensors --name NAME --out pkg && pip install ./pkg`;
3. train the gate on a mix of every task's data and general data: `sammoe fit --config configs/gate.yaml` with the same
   model/trainer overrides and `data.init_args.roots` listing all datasets;
4. evaluate: `sammoe test --config configs/evaluate.yaml` (Dice/NSD at 1/3/5/10 clicks on the original grid)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sammoe demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--seed", type=int, default=1, help="phantom seed; the shipped models saw seed 0")
    parser.add_argument("--cases", type=int, default=96, help="training+validation phantoms for the gate")
    # 30, not 10: with 10 phantoms one target is a tenth of a class's mean, so a single misrouted target among
    # 60 moved a class by 1.4-2.6 Dice points (seed 1) and the table changes from seed to seed.
    parser.add_argument("--test-cases", type=int, default=30, help="held-out test phantoms")
    parser.add_argument(
        "--epochs", type=int, default=None, help="gate training epochs (default: configs/gate.yaml's)"
    )
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 3, 5], help="click counts evaluated")
    parser.add_argument("--no-colin27", action="store_true", help="skip the real-MRI table")
    parser.add_argument(
        "--no-composition",
        action="store_true",
        help="skip adding the experts one at a time with their routers",
    )
    parser.add_argument("--fast", action="store_true", help="a quick smoke run (CI): few cases, one epoch")
    return parser


def _check_models(out: Path) -> list[str]:
    """The shipped foundation and at least two usable experts, or one clear line on how to get them. Without
    two installed experts, the example plugins shipped in the package are laid out under ``out/plugins``."""
    from sammoe.assets import FOUNDATION_TINY
    from sammoe.plugins.discovery import ENV_VAR, discover

    if not FOUNDATION_TINY.is_file():
        raise ConfigError(f"the shipped foundation model {FOUNDATION_TINY} is missing; run `make foundation`")
    from sammoe.loading import load_backbone
    from sammoe.model.sam3d import backbone_fingerprint

    fingerprint = backbone_fingerprint(load_backbone(FOUNDATION_TINY, "tiny"))
    records = discover(backbone_fingerprint=fingerprint)
    usable = [r.name for r in records if r.status == "ok"]
    if len(usable) < 2 and os.environ.get(ENV_VAR) is None:
        from sammoe.cli import demo_plugins as examples

        plugins = examples.lay_out(out / "plugins")
        examples.use(plugins)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
        print(
            f"sammoe demo: the example experts are not installed; using the copies shipped in sammoe ({plugins})"
        )
        records = discover(backbone_fingerprint=fingerprint)
        usable = [r.name for r in records if r.status == "ok"]
    for record in records:
        if record.status != "ok":
            print(f"sammoe demo: skipping expert {record.name}: {record.reason}")
    if len(usable) < 2:
        raise ConfigError(
            f"the demo needs two installed experts finetuned on the shipped foundation model, found {usable}; "
            "run `make install` (installs experts/*) or `make experts-train`"
        )
    return usable


def _run(argv: list[str], cwd: Path, log: Path) -> float:
    """Run one `sammoe ...` command in `cwd`, its output appended to `log`; fail with the log's last line."""
    env = dict(os.environ, WANDB_MODE=os.environ.get("WANDB_MODE", "offline"), PYTHONUNBUFFERED="1")
    # A wandb-core service of the calling process (e.g. a notebook or pytest that already logged) would
    # write the command's run files relative to its own working directory: each command gets its own.
    env.pop("WANDB_SERVICE", None)
    start = time.perf_counter()
    print(f"$ sammoe {' '.join(argv)}\n  (running; its output goes to {log})", flush=True)
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"\n$ sammoe {' '.join(argv)}\n")
        handle.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "sammoe", *argv], cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, env=env
        )
    if proc.returncode != 0:
        lines = [
            line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
        reason = ([line for line in lines if line.startswith("sammoe: error")] or lines[-1:] or [""])[-1]
        raise ConfigError(f"`sammoe {argv[0]}` failed (exit {proc.returncode}): {reason}; see {log}")
    return time.perf_counter() - start


def _write_colin27_dataset(root: Path) -> Path:
    """The bundled Colin27 T1 + AAL as a one-case nnU-Net test set with the deep grey-matter classes."""
    import nibabel as nib
    import numpy as np

    from sammoe.assets import ASSETS

    source = ASSETS / "colin27"
    if (root / "dataset.json").is_file():
        return root
    for folder in (
        "imagesTr",
        "labelsTr",
        "imagesTs",
        "labelsTs",
    ):  # a test-only dataset: empty training folders
        (root / folder).mkdir(parents=True, exist_ok=True)
    image = nib.load(source / "ch2.nii.gz")
    atlas = nib.load(source / "aal.nii.gz")
    aal = np.asarray(atlas.dataobj)
    label = np.zeros(aal.shape, dtype=np.uint8)
    for new_value, aal_value in enumerate(COLIN27_CLASSES.values(), start=1):
        label[aal == aal_value] = new_value
    nib.save(image, root / "imagesTs" / "colin27_0000.nii.gz")
    nib.save(nib.Nifti1Image(label, atlas.affine), root / "labelsTs" / "colin27.nii.gz")
    meta = {
        "name": "colin27",
        "description": "Colin27 T1 MRI with AAL deep grey-matter labels (bundled with sammoe)",
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, **{name: i for i, name in enumerate(COLIN27_CLASSES, start=1)}},
        "numTraining": 0,
        "numTest": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def _rows(csv_path: Path):
    from sammoe.eval.report import read_rows_csv

    if not csv_path.is_file():
        raise ConfigError(f"{csv_path} was not written; see the run log")
    return read_rows_csv(csv_path)


def _claims(report: dict[str, Any], models: list[str], k: str) -> list[str]:
    """Plain statements about the MoE, computed from the report (true or false, as measured)."""
    singles = [m for m in models if m not in ("moe", "oracle")]
    table = report["models"]
    lines = []
    worst = None
    for cls in report["classes"]:
        best = max(
            (table[m][cls].get(k) for m in singles if table[m].get(cls, {}).get(k) is not None), default=None
        )
        moe = table["moe"].get(cls, {}).get(k)
        if best is None or moe is None:
            continue
        gap = best - moe
        worst = gap if worst is None else max(worst, gap)
    if worst is not None:
        verdict = "yes" if worst <= 0.01 else "no"
        lines.append(
            f"MoE within 1 Dice point of the best single model on every class at {k} click(s): {verdict} (largest gap {100 * worst:+.1f} points)"
        )
    avg = report["average"]
    moe_avg = avg["moe"]["all"].get(k)
    best_single = max((avg[m]["all"].get(k) or -math.inf for m in singles), default=None)
    if moe_avg is not None and best_single is not None:
        verdict = "yes" if moe_avg > best_single else "no"
        lines.append(
            f"MoE average above every single model at {k} click(s): {verdict} (MoE {moe_avg:.3f}, best single {best_single:.3f})"
        )
    return lines


def _routing_claims(report: dict[str, Any], background: float | None) -> list[str]:
    lines = []
    if report.get("routing_accuracy") is not None:
        lines.append(f"Routing accuracy (first click of every target): {report['routing_accuracy']:.3f}")
    if background is not None:
        verdict = "yes" if background <= 0.02 else "no"
        lines.append(
            f"Background clicks (unlabelled voxels) sent to an expert at most 2%: {verdict} ({100 * background:.1f}%)"
        )
    return lines


def _composition(out: Path, log: Path, experts: list[str], data: list[str], timings: dict) -> list[dict]:
    """Experts added one at a time with no gate, each step routed by the installed experts' own routers and
    evaluated on the test phantoms at 1 click (foundation and MoE only)."""
    steps = []
    for k in range(1, len(experts) + 1):
        chosen, name = experts[:k], f"routers_{k}"
        timings[f"routers, experts {' + '.join(chosen)} (sammoe test)"] = _run(
            ["test", "--config", str(CONFIGS / "evaluate.yaml"), *data, "--model.init_args.click_counts=[1]",
             "--model.init_args.gate=null", "--model.init_args.routing=routers",
             f"--model.init_args.experts=[{','.join(chosen)}]", "--model.init_args.evaluate_experts=false",
             f"--trainer.logger.init_args.save_dir=runs/{name}", f"--trainer.logger.init_args.name={name}"],
            out, log,
        )  # fmt: skip
        rows = _rows(out / "runs" / name / "test" / "results.csv")
        steps.append({"experts": chosen, "rows": rows})
    return steps


def _composition_markdown(steps: list[dict]) -> tuple[str, dict[str, Any]]:
    """Per-class Dice (1 click) of the foundation and of the MoE after each step, routing accuracy, and how
    many routes of other targets each added expert changed."""
    from sammoe.eval.results import nanmean

    def dice(rows, model, cls):
        return nanmean(r.dice for r in rows if r.model == model and r.class_name == cls and r.n_clicks == 1)

    def first(rows) -> dict[tuple[str, str], Any]:
        return {(r.case_id, r.class_name): r for r in rows if r.model == "moe" and r.n_clicks == 1}

    classes = list(dict.fromkeys(r.class_name for r in steps[0]["rows"]))
    header = ["class", "foundation", *(f"+ {step['experts'][-1]}" for step in steps)]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for cls in classes:
        values = [dice(steps[0]["rows"], "foundation", cls), *(dice(s["rows"], "moe", cls) for s in steps)]
        lines.append(f"| {cls} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    summary: dict[str, Any] = {"steps": []}
    previous: dict | None = None
    for step in steps:
        now = {key: r.routed_expert for key, r in first(step["rows"]).items()}
        moe = [r for r in step["rows"] if r.model == "moe" and r.n_clicks == 1]
        accuracy = sum(r.routed_expert == r.oracle_expert for r in moe) / max(len(moe), 1)
        changed = None
        if previous is not None:  # targets of the earlier experts' and general classes: did any route move?
            owner = {key: r.oracle_expert for key, r in first(step["rows"]).items()}
            # the added expert's own targets are left out: did any other target's route move?
            others = [key for key in now if key in previous and owner[key] != step["experts"][-1]]
            changed = sum(now[key] != previous[key] for key in others) / max(len(others), 1)
        summary["steps"].append({"experts": step["experts"], "routing_accuracy": accuracy,
                                 "other_routes_changed": changed})  # fmt: skip
        previous = now
    notes = [
        f"- + {' + '.join(s['experts'])}: routing accuracy {s['routing_accuracy']:.3f}"
        + (
            ""
            if s["other_routes_changed"] is None
            else f"; routes of the other targets changed by adding it: {100 * s['other_routes_changed']:.1f}%"
        )  # fmt: skip
        for s in summary["steps"]
    ]
    text = "\n".join([
        "## Experts added one at a time, each routed by its own router (no gate)\n",
        "The MoE after each `pip install`: Dice after 1 click on the same test phantoms, through the Predictor.\n",
        *lines, "", *notes, "",
    ])  # fmt: skip
    return text, summary


def _summary_markdown(
    report: dict[str, Any],
    official: dict[str, Any],
    colin: dict[str, Any] | None,
    claims: list[str],
    timings: dict,
    composition: str = "",
) -> str:
    from sammoe.eval.report import render_markdown

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
            title="The same phantoms, official ground-truth-box crop (for comparison with published numbers only)",
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.fast:
        args.cases, args.test_cases, args.epochs, args.clicks = 6, 2, 1, [1, 5]
    if not (CONFIGS / "gate.yaml").is_file():
        raise ConfigError(f"{CONFIGS} not found; the sammoe installation is incomplete, reinstall it")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    total = time.perf_counter()
    experts = _check_models(out)
    print(f"sammoe demo: foundation + experts {', '.join(experts)}; run directory {out}", flush=True)

    clicks = "[" + ",".join(map(str, args.clicks)) + "]"
    data = [  # one phantom dataset for the gate's training/validation and the test split
        "--data.init_args.root=runs/phantoms/dataset",
        "--data.init_args.cache_dir=runs/phantoms/cache",
        f"--data.init_args.phantom_seed={args.seed}",
        f"--data.init_args.n_cases={args.cases}",
        f"--data.init_args.n_test={args.test_cases}",
    ]
    timings = {}
    epochs = [] if args.epochs is None else [f"--trainer.max_epochs={args.epochs}",
                                             f"--trainer.check_val_every_n_epoch={args.epochs}"]  # fmt: skip
    timings["gate training (sammoe fit)"] = _run(
        ["fit", "--config", str(CONFIGS / "gate.yaml"), *data, *epochs, f"--model.init_args.click_counts={clicks}"],
        out, log,
    )  # fmt: skip
    timings["phantom evaluation (sammoe test)"] = _run(
        ["test", "--config", str(CONFIGS / "evaluate.yaml"), *data, f"--model.init_args.click_counts={clicks}"],
        out, log,
    )  # fmt: skip
    from sammoe.eval.report import build_report, plot_dice

    test_dir = out / "runs" / "evaluate" / "test"
    report = build_report(_rows(test_dir / "results.csv"), foundation="foundation", moe="moe")
    official = build_report(
        _rows(test_dir / "official_bbox" / "results.csv"), foundation="foundation", moe="moe"
    )
    background = json.loads((test_dir / "report.json").read_text()).get("background_claims")
    composition, composed = "", None
    if not args.no_composition:
        composition, composed = _composition_markdown(_composition(out, log, experts, data, timings))
    colin = None
    if not args.no_colin27:
        _write_colin27_dataset(out / "colin27")
        timings["Colin27 evaluation (sammoe test)"] = _run(
            ["test", "--config", str(CONFIGS / "evaluate.yaml"),
             "--data=sammoe.lit.datamodule.SegDataModule", "--data.init_args.roots=[colin27]",
             f"--data.init_args.classes=[{','.join(COLIN27_CLASSES)}]", "--data.init_args.crop_size=64",
             "--data.init_args.spacing=1.5", "--data.init_args.eval_split=test",
             "--data.init_args.cache_dir=runs/colin27/cache", "--trainer.logger.init_args.save_dir=runs/colin27",
             "--trainer.logger.init_args.name=colin27", f"--model.init_args.click_counts={clicks}"],
            out, log,
        )  # fmt: skip
        colin = build_report(
            _rows(out / "runs" / "colin27" / "test" / "results.csv"), foundation="foundation"
        )
    timings["whole demo"] = time.perf_counter() - total

    models = list(report["models"])
    shown = [k for k in (1, 5) if k in report["click_counts"]] or report["click_counts"]
    claims = [line for k in shown for line in _claims(report, models, str(k))]
    claims += _routing_claims(report, background)
    final = dict(report)
    final["protocol"] = CLICK_PROTOCOL
    final["notes"] = DISCLAIMER
    final["background_claims"] = background
    final["official_bbox"] = official
    final["colin27"] = colin
    final["composition"] = composed
    final["claims"] = claims
    final["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    final["seed"] = args.seed
    final["how_to_run_for_real"] = GPU_RECIPE
    (out / "report.json").write_text(json.dumps(final, indent=2, allow_nan=False) + "\n")
    plot_dice(report, out / "dice.png", 5 if 5 in report["click_counts"] else None)
    markdown = _summary_markdown(report, official, colin, claims, timings, composition)
    (out / "report.md").write_text(markdown)
    print(markdown)
    print(f"sammoe demo: report written to {out / 'report.md'} (also report.json, dice.png; run log {log})")
    return 0
