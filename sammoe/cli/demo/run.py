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
import os
import subprocess
import sys
import time
from pathlib import Path

from sammoe import assets
from sammoe.cli.demo.colin27 import COLIN27_CLASSES, write_colin27_dataset
from sammoe.cli.demo.report import DISCLAIMER, GPU_RECIPE, composition_markdown, summary_markdown
from sammoe.errors import ConfigError
from sammoe.eval.claims import moe_claims, routing_claims
from sammoe.eval.protocols import CLICK_PROTOCOL

CONFIGS = assets.CONFIGS


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
        from sammoe.cli.demo import plugins as examples

        plugins = examples.lay_out(out / "plugins")
        examples.use(plugins)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugins), os.environ.get("PYTHONPATH")]))
        print(
            f"sammoe demo: the example experts are not installed; using the copies shipped in sammoe "
            f"({plugins})"
        )
        records = discover(backbone_fingerprint=fingerprint)
        usable = [r.name for r in records if r.status == "ok"]
    for record in records:
        if record.status != "ok":
            print(f"sammoe demo: skipping expert {record.name}: {record.reason}")
    if len(usable) < 2:
        raise ConfigError(
            "the demo needs two installed experts finetuned on the shipped foundation model, "
            f"found {usable}; "
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
    seconds = time.perf_counter() - start
    print(f"  done in {seconds:.0f} s", flush=True)  # each stage's time as it runs, in logs too
    return seconds


def _rows(csv_path: Path):
    from sammoe.eval.report import read_rows_csv

    if not csv_path.is_file():
        raise ConfigError(f"{csv_path} was not written; see the run log")
    return read_rows_csv(csv_path)


def _composition(
    out: Path, log: Path, experts: list[str], data: list[str], timings: dict[str, float]
) -> list[tuple[list[str], list]]:
    """Experts added one at a time with no gate, each step routed by the installed experts' own routers and
    evaluated on the test phantoms at 1 click (foundation and MoE only): (experts so far, rows) per step."""
    steps = []
    for k in range(1, len(experts) + 1):
        chosen, name = experts[:k], f"routers_{k}"
        command = [
            "test",
            "--config",
            str(CONFIGS / "evaluate.yaml"),
            *data,
            "--model.init_args.click_counts=[1]",
            "--model.init_args.gate=null",
            "--model.init_args.routing=routers",
            f"--model.init_args.experts=[{','.join(chosen)}]",
            "--model.init_args.evaluate_experts=false",
            "--model.init_args.nsd_tolerance_mm=null",  # the composition table shows Dice only
            f"--trainer.logger.init_args.save_dir=runs/{name}",
            f"--trainer.logger.init_args.name={name}",
        ]
        timings[f"routers, experts {' + '.join(chosen)} (sammoe test)"] = _run(command, out, log)
        steps.append((chosen, _rows(out / "runs" / name / "test" / "results.csv")))
    return steps


def _colin27_command(clicks: str) -> list[str]:
    return [
        "test",
        "--config",
        str(CONFIGS / "evaluate.yaml"),
        "--data=sammoe.lit.datamodule.SegDataModule",
        "--data.init_args.roots=[colin27]",
        f"--data.init_args.classes=[{','.join(COLIN27_CLASSES)}]",
        "--data.init_args.crop_size=64",
        "--data.init_args.spacing=1.5",
        "--data.init_args.eval_split=test",
        "--data.init_args.cache_dir=runs/colin27/cache",
        "--trainer.logger.init_args.save_dir=runs/colin27",
        "--trainer.logger.init_args.name=colin27",
        f"--model.init_args.click_counts={clicks}",
    ]


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
    timings: dict[str, float] = {}
    epochs = []
    if args.epochs is not None:
        epochs = [f"--trainer.max_epochs={args.epochs}", f"--trainer.check_val_every_n_epoch={args.epochs}"]
    click_counts = f"--model.init_args.click_counts={clicks}"
    fit = ["fit", "--config", str(CONFIGS / "gate.yaml"), *data, *epochs, click_counts]
    timings["gate training (sammoe fit)"] = _run(fit, out, log)
    test = ["test", "--config", str(CONFIGS / "evaluate.yaml"), *data, click_counts]
    timings["phantom evaluation (sammoe test)"] = _run(test, out, log)
    from sammoe.eval.report import build_report, plot_dice

    test_dir = out / "runs" / "evaluate" / "test"
    report = build_report(_rows(test_dir / "results.csv"), foundation="foundation", moe="moe")
    official = build_report(
        _rows(test_dir / "official_bbox" / "results.csv"), foundation="foundation", moe="moe"
    )
    background = json.loads((test_dir / "report.json").read_text()).get("background_claims")
    composition, composed = "", None
    if not args.no_composition:
        composition, composed = composition_markdown(_composition(out, log, experts, data, timings))
    colin = None
    if not args.no_colin27:
        write_colin27_dataset(out / "colin27")
        timings["Colin27 evaluation (sammoe test)"] = _run(_colin27_command(clicks), out, log)
        colin = build_report(
            _rows(out / "runs" / "colin27" / "test" / "results.csv"), foundation="foundation"
        )
    timings["whole demo"] = time.perf_counter() - total

    shown = [k for k in (1, 5) if k in report["click_counts"]] or report["click_counts"]
    measured = [c for k in shown for c in moe_claims(report, str(k))] + routing_claims(report, background)
    claims = [c.text for c in measured]
    final = dict(report)
    final["protocol"] = CLICK_PROTOCOL
    final["notes"] = DISCLAIMER
    final["background_claims"] = background
    final["official_bbox"] = official
    final["colin27"] = colin
    final["composition"] = None if composed is None else {"steps": composed}
    final["claims"] = claims
    final["claims_hold"] = {c.name: c.holds for c in measured}
    final["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    final["seed"] = args.seed
    final["how_to_run_for_real"] = GPU_RECIPE
    (out / "report.json").write_text(json.dumps(final, indent=2, allow_nan=False) + "\n")
    plot_dice(report, out / "dice.png", 5 if 5 in report["click_counts"] else None)
    markdown = summary_markdown(report, official, colin, claims, timings, composition)
    (out / "report.md").write_text(markdown)
    print(markdown)
    print(f"sammoe demo: report written to {out / 'report.md'} (also report.json, dice.png; run log {log})")
    return 0
