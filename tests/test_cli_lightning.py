"""`sammoe fit/validate/test`: shipped configs parse, one-line user errors, W&B offline run files, DDP on
two CPU processes (gloo), resume with `--ckpt_path last` after killing a run.

Runs use the tiny backbone on a few small phantoms (generated once per module) with 1-2 steps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sammoe.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "GROUP_RANK")


@pytest.fixture(scope="module")
def phantom_dataset_dirs(tmp_path_factory) -> dict[str, str]:
    from sammoe.data.phantoms import make_phantom_dataset

    root = tmp_path_factory.mktemp("cli_phantoms")
    make_phantom_dataset(root / "ds", n_cases=3, n_test=1, shape=(48, 48, 32), spacing=(2.0, 2.0, 3.0))
    return {"root": str(root / "ds"), "cache": str(root / "cache")}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # no console capture inside pytest's own capture
    for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(key, str(tmp_path / "wandb_home"))
    monkeypatch.setattr(sys, "argv", ["sammoe"])


def tiny_config(
    path: Path, run: Path, phantom_dataset_dirs: dict[str, str], *, logger: str = "wandb", callbacks: str = ""
) -> Path:
    """A finetune config that runs in seconds: 1 train step, 1 click count, 2 rollout iterations.
    `callbacks` is YAML for `trainer.callbacks` (indented by 2 spaces, starting with a newline)."""
    if logger == "wandb":
        logger_yaml = (
            "\n  logger:\n    class_path: lightning.pytorch.loggers.WandbLogger"
            f"\n    init_args: {{project: sammoe-test, name: tiny, save_dir: {run}}}"
        )
    else:
        logger_yaml = "\n  logger: false"
    trainer = textwrap.dedent(
        f"""\
        seed_everything: 0
        trainer:
          accelerator: cpu
          devices: 1
          max_epochs: 1
          limit_train_batches: 1
          num_sanity_val_steps: 0
          log_every_n_steps: 1
          enable_progress_bar: false
          enable_model_summary: false
          default_root_dir: {run}"""
    )
    rest = textwrap.dedent(
        f"""
        model:
          class_path: ExpertFinetune
          init_args:
            name: spinal_cord
            checkpoint: seeded
            task: {{classes: {{spinal_cord: 5}}, modality: CT, dataset: phantom}}
            num_iterations: 2
            click_counts: [1]
            nsd_tolerance_mm: null
        data:
          class_path: PhantomDataModule
          init_args:
            root: {phantom_dataset_dirs["root"]}
            cache_dir: {phantom_dataset_dirs["cache"]}
            n_cases: 3
            n_test: 1
            crop_size: 64
            batch_size: 1
            val_fraction: 0.34
            classes: [spinal_cord, liver, kidney_left]
        """
    )
    path.write_text(trainer + logger_yaml + (callbacks or "\n  callbacks: []") + rest)
    return path


# ----------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "command",
    [
        ["fit", "--config", "foundation.yaml"],
        ["fit", "--config", "finetune.yaml"],
        ["fit", "--config", "finetune.yaml", "--config", "experts/textured_lesion.yaml"],
        ["fit", "--config", "gate.yaml"],
        ["fit", "--config", "router.yaml", "--config", "experts/textured_lesion.yaml"],
        ["test", "--config", "evaluate.yaml"],
    ],
)
def test_shipped_configs_parse(command, capsys):
    args = [a if not a.endswith(".yaml") else str(CONFIGS / a) for a in command]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: sammoe.lit." in printed and "WandbLogger" in printed
    if "textured_lesion.yaml" in command[-1]:
        assert "name: textured_lesion" in printed and "- textured_lesion" in printed


def test_help_lists_the_trainer_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {cmd}" in out for cmd in ("fit", "validate", "test", "predict", "experts"))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            ["--model.init_args.bogus=1"],
            "bad configuration: Parser key \"model\": Option 'bogus' is not accepted",
        ),
        (["--trainer.max_epochs=abc"], 'Parser key "trainer.max_epochs"'),
        (["--model.init_args.checkpoint=/no/such/turbo.pth"], "/no/such/turbo.pth: checkpoint not found"),
        (["--config", "MISSING"], "File does not exist"),
    ],
)
def test_user_errors_exit_2_with_one_line(extra, expected, capsys, tmp_path, phantom_dataset_dirs):
    cfg = tiny_config(tmp_path / "c.yaml", tmp_path / "run", phantom_dataset_dirs, logger="none")
    extra = [str(tmp_path / "missing.yaml") if a == "MISSING" else a for a in extra]
    assert main(["fit", "--config", str(cfg), *extra]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sammoe:")]
    assert len(errors) == 1 and expected in errors[0], errors


def test_unknown_expert_exits_2(capsys):
    code = main(["fit", "--config", str(CONFIGS / "gate.yaml"), "--model.init_args.experts=[no_such_expert]"])
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sammoe:")]
    assert len(errors) == 1 and "'no_such_expert'" in errors[0] and "not installed" in errors[0]


# ----------------------------------------------------------------------------------------------- W&B


def test_fit_logs_to_wandb_offline_and_saves_config_report_and_expert(tmp_path, phantom_dataset_dirs):
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path / "c.yaml", run, phantom_dataset_dirs)
    assert main(["fit", "--config", str(cfg)]) == 0
    assert main(["fit", "--config", str(cfg)]) == 0  # rerun: config.yaml is overwritten, no error
    config = (run / "config.yaml").read_text()
    assert "ExpertFinetune" in config and "spinal_cord" in config
    report = json.loads((run / "val" / "report.json").read_text())
    assert set(report["models"]) == {"spinal_cord", "foundation"}
    assert (run / "val" / "report.md").is_file() and (run / "val" / "dice.png").is_file()
    assert (run / "expert" / "decoder.safetensors").is_file() and (run / "expert" / "decoder.json").is_file()
    runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    files = runs[-1] / "files"
    assert list(runs[-1].glob("run-*.wandb"))
    tables = sorted(p.name for p in (files / "media" / "table" / "val").glob("*.table.json"))
    assert any(name.startswith("dice_1_clicks") for name in tables), tables
    assert list((files / "media" / "images" / "val").glob("overlays*.png"))
    # offline runs keep metrics, hyperparameters and the config in the run's protobuf log
    keys = (b"train/loss", b"val/dice", b"decoder_lr_scale", b"ExpertFinetune")
    deadline = time.time() + 20  # the wandb service may still be flushing the log
    while True:
        log = next(runs[-1].glob("run-*.wandb")).read_bytes()
        if all(key in log for key in keys) or time.time() > deadline:
            break
        time.sleep(0.5)
    for key in keys:
        assert key in log, key


# ----------------------------------------------------------------------------------------------- subprocesses


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(WANDB_MODE="disabled", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow  # over 10 s on 2 cores; `make test-all` runs it
def test_ddp_two_cpu_processes_count_each_case_once(tmp_path, phantom_dataset_dirs):
    run = tmp_path / "run"
    cfg = tiny_config(tmp_path / "c.yaml", run, phantom_dataset_dirs, logger="none")
    cmd = [
        sys.executable,
        "-m",
        "sammoe",
        "fit",
        "--config",
        str(cfg),
        "--trainer.accelerator=cpu",
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
    ]
    proc = subprocess.run(
        cmd,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MEMBER: 2/2" in proc.stderr + proc.stdout
    rows = (run / "val" / "results.csv").read_text().splitlines()[1:]
    keys = [tuple(r.split(",")[:3]) for r in rows]
    # 1 validation case x 3 classes x 2 models, each once although the sampler padded 3 targets to 4
    assert len(keys) == len(set(keys)) == 6
    assert (run / "expert" / "decoder.safetensors").is_file()


HANG = '''
import time
from pathlib import Path
from lightning.pytorch.callbacks import Callback


class HangAtEpoch(Callback):
    """Stands in for a crash: stops making progress when epoch `epoch` starts (after the last checkpoint)."""

    def __init__(self, epoch: int, marker: str) -> None:
        self.epoch, self.marker = epoch, marker

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            Path(self.marker).write_text(str(trainer.global_step))
            time.sleep(600)
'''


@pytest.mark.slow  # over 10 s on 2 cores; `make test-all` runs it
def test_resume_after_kill_loses_no_finished_epoch(tmp_path, phantom_dataset_dirs):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    marker = tmp_path / "hung"
    (tmp_path / "hang_callback.py").write_text(HANG)
    checkpoint = f"""
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{dirpath: {ckpts}, save_last: true}}"""
    hang = f"""
    - class_path: hang_callback.HangAtEpoch
      init_args: {{epoch: 2, marker: {marker}}}"""
    first = tiny_config(
        tmp_path / "first.yaml", run, phantom_dataset_dirs, logger="none", callbacks=checkpoint + hang
    )
    second = tiny_config(
        tmp_path / "second.yaml", run, phantom_dataset_dirs, logger="none", callbacks=checkpoint
    )
    common = ["--trainer.max_epochs=3", "--trainer.limit_val_batches=0"]
    env = _env(tmp_path, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sammoe", "fit", "--config", str(first), *common],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    try:
        deadline = time.time() + 240
        while not marker.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert marker.exists(), proc.stdout.read() if proc.poll() is not None else "timed out"
        os.killpg(proc.pid, signal.SIGKILL)  # the run dies in epoch 2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert killed["epoch"] == 1 and killed["global_step"] == 2  # epochs 0 and 1 finished
    resumed = subprocess.run(
        [sys.executable, "-m", "sammoe", "fit", "--config", str(second), *common, "--ckpt_path", "last"],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(ckpts / "last.ckpt", weights_only=True, map_location="cpu")
    assert final["epoch"] == 2 and final["global_step"] == 3  # only epoch 2 was run again
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout


def test_version_and_an_unknown_command(capsys):
    from sammoe import __version__
    from sammoe.cli import main as sammoe_main

    for flag in ("--version", "-V"):
        assert sammoe_main([flag]) == 0
        assert capsys.readouterr().out.startswith(f"sammoe {__version__} (torch ")
    assert sammoe_main(["segmnet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "sammoe: error: unknown command 'segmnet'; run `sammoe --help` for the list"
    )


class _RunsCode:
    """Unpickling this writes a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


def test_ckpt_path_from_a_url_or_that_runs_code_is_refused(tmp_path, phantom_dataset_dirs, capsys):
    """A remote checkpoint is never downloaded (the server sees no request); a local pickle that would run
    code is refused before training starts; neither runs its payload."""
    import http.server
    import threading

    marker = tmp_path / "ran"
    payload = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _RunsCode(str(marker))}, payload)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(payload.read_bytes())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg = tiny_config(tmp_path / "c.yaml", tmp_path / "run", phantom_dataset_dirs, logger="none")
    url = f"http://127.0.0.1:{server.server_port}/evil.ckpt"
    try:
        cases = [
            (url, "never loaded from a URL"),
            (str(payload), "without running code"),
            (str(tmp_path / "nope.ckpt"), "no such checkpoint file"),
        ]
        for ckpt, expected in cases:
            assert main(["fit", "--config", str(cfg), "--ckpt_path", ckpt]) == 2
            errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sammoe:")]
            assert len(errors) == 1 and expected in errors[0] and ckpt in errors[0], errors
    finally:
        server.shutdown()
    assert not marker.exists() and requests == []
    assert not (tmp_path / "run" / "checkpoints").exists()
