"""`sammoe fit | validate | test | predict`: LightningCLI over the sammoe LightningModules and datamodules.

Model and data are in subclass mode (`class_path` + `init_args`, or a short class name such as
`GateTraining`), `--config` files chain (later ones override), `--print_config` goes after the subcommand,
and the resolved config is saved as `config.yaml` in the run directory (overwritten on a rerun) and sent to
W&B. W&B runs offline unless WANDB_MODE says otherwise. Errors a user can cause print one line, exit 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from sammoe.errors import SammoeError

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def _one_line(text: str) -> str:
    """jsonargparse's nested multi-line error as one line: the key, the most specific reason, the value."""
    lines = [line.strip().lstrip("- ").strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return "invalid arguments"
    head, rest = lines[0], lines[1:]
    if not head.endswith(":") or not rest:
        return head
    noise = (
        "Does not validate",
        "Subtypes:",
        "Errors:",
        "Given value type:",
        "Expected a <class 'NoneType'>",
    )
    reasons = [line for line in rest if not line.startswith(noise) and not line.endswith(":")]
    given = [line.split(":", 1)[1].strip() for line in reasons if line.startswith("Given value:")]
    reasons = [line for line in reasons if not line.startswith("Given value:")]
    out = f"{head} {reasons[-1] if reasons else 'invalid value'}"
    if given and given[0] not in out and len(given[0]) < 80 and not given[0].startswith("NestedArg"):
        out += f" (given: {given[0]})"
    return out


def _user_error(err: BaseException) -> SammoeError | None:
    """The SammoeError behind an exception (jsonargparse wraps what a class raises while instantiating)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SammoeError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _build_cli_classes() -> tuple[type, type]:
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

    class ConfigToRunDir(SaveConfigCallback):
        """Saves config.yaml into the run directory (overwrite allowed) and sends it to W&B. A module may name
        its own file (``config_filename``): a router shares its expert's run directory with the finetuning."""

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            self.config_filename = getattr(pl_module, "config_filename", self.config_filename)
            saved = getattr(trainer.datamodule, "config_path", None)  # a prediction's: in its output folder
            if saved is not None:
                self.config_filename = str(Path(saved).resolve())  # absolute: os.path.join drops the log dir
            super().setup(trainer, pl_module, stage)

        def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
            from sammoe.lit.wandb_log import wandb_logger

            logger = wandb_logger(trainer)
            if logger is None:
                return
            import yaml

            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            logger.experiment.config.update({"config": config}, allow_val_change=True)

    class SafeResumeCLI(LightningCLI):
        """Checks `--ckpt_path` before anything reads it (Lightning >= 2.5 reads its hyperparameters while
        parsing), and loads it weights-only unless the user says otherwise (`--weights_only false`)."""

        def _check_ckpt_path(self) -> None:
            from sammoe.loading.checkpoints import check_resume_checkpoint

            subcommand = self.config.get("subcommand")
            config = self.config.get(subcommand) if subcommand else None
            if config is not None:
                check_resume_checkpoint(config.get("ckpt_path"))
                if "weights_only" in config and config.get("weights_only") is None:
                    config["weights_only"] = True

        def _parse_ckpt_path(self) -> None:
            self._check_ckpt_path()
            super()._parse_ckpt_path()

        def before_instantiate_classes(self) -> None:
            self._check_ckpt_path()
            subcommand = self.config.get("subcommand")
            if subcommand:
                check_run_outputs(self.config.get(subcommand), subcommand)

    return SafeResumeCLI, ConfigToRunDir


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a jsonargparse Namespace or a dict (None-safe)."""
    if config is None:
        return default
    value = config.get(key) if hasattr(config, "get") else getattr(config, key, None)
    return default if value is None else value


def _run_dir(trainer: Any) -> Path | None:
    """The run folder Lightning will use (``trainer.log_dir``) as far as the config tells before anything is
    built: a save_dir logger's folder (W&B), the default_root_dir without a logger; None when a
    TensorBoard/CSV logger adds a new version folder."""
    root = Path(_get(trainer, "default_root_dir", os.getcwd()))
    logger = _get(trainer, "logger", False)
    if isinstance(logger, list):
        logger = logger[0] if logger else False
    if logger is False:
        return root
    if logger is True or not hasattr(logger, "get"):
        return None  # Lightning's default logger: <root>/lightning_logs/version_N, new each run
    class_path = str(_get(logger, "class_path", ""))
    if class_path.endswith(("TensorBoardLogger", "CSVLogger")):
        return None
    return Path(_get(_get(logger, "init_args"), "save_dir", "."))


def _model_class(model: Any) -> type | None:
    from importlib import import_module

    module, _, name = str(_get(model, "class_path", "")).rpartition(".")
    try:
        return getattr(import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None


def _weights_inputs(args: Any) -> dict[str, Any]:
    """The files the model reads: its starting weights (a name -> the file it stands for), a gate, experts."""
    from sammoe import assets
    from sammoe.hub import DEMO, REGISTRY, cached
    from sammoe.loading.checkpoints import SEEDED, default_checkpoint

    found: dict[str, Any] = {}
    checkpoint = _get(args, "checkpoint")
    if checkpoint is None:
        checkpoint = default_checkpoint(str(_get(args, "preset", "tiny")))
    elif checkpoint == DEMO:
        checkpoint = assets.FOUNDATION_TINY
    elif checkpoint in REGISTRY:
        checkpoint = cached(str(checkpoint))
    elif checkpoint == SEEDED:
        checkpoint = None
    found["model.init_args.checkpoint"] = checkpoint
    found["model.init_args.gate"] = _get(args, "gate")
    for name, path in dict(_get(args, "expert_files", {}) or {}).items():
        found[f"model.init_args.expert_files {name}"] = path
    return found


def _dataset_inputs(args: Any) -> dict[str, Path]:
    """A dataset's images, labels and dataset.json (nnU-Net layout under each root)."""
    roots = _get(args, "roots", []) or []
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    if _get(args, "root") is not None:
        roots.append(_get(args, "root"))
    found: dict[str, Path] = {}
    for root in map(Path, roots):
        for part in ("dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            found[f"the dataset's {root / part}"] = root / part
    return found


def check_run_outputs(config: Any, subcommand: str) -> None:
    """Refuse, before anything is built or trained, a run whose outputs would replace its inputs: the
    exported weights (run folder's and ``export_path``) and the saved config over the starting weights, a
    gate or expert file, an image or label of its dataset, or a ``--config`` file it was started from. The
    run's own earlier outputs are replaced, as on any rerun."""
    from sammoe.files import check_outputs

    if config is None:
        return
    model, trainer = _get(config, "model"), _get(config, "trainer")
    args = _get(model, "init_args", {})
    run_dir = _run_dir(trainer)
    outputs: dict[str, Path] = {}
    cls = _model_class(model)
    data_cls = _model_class(_get(config, "data"))
    if hasattr(data_cls, "saved_config"):
        run_dir = None
        outputs["the saved config"] = data_cls.saved_config(_get(_get(config, "data"), "init_args"))
    if run_dir is not None:
        name = getattr(cls, "config_filename", "config.yaml")
        outputs[f"the run folder's {name} (saved config)"] = run_dir / name
    if subcommand == "fit" and hasattr(cls, "export_targets"):
        outputs.update(cls.export_targets(args, run_dir))
    inputs: dict[str, Any] = {}
    for i, path in enumerate(_get(config, "config", []) or []):
        inputs[f"--config {path}" if i == 0 else f"--config {path} ({i + 1})"] = str(
            getattr(path, "absolute", path)
        )
    inputs.update(_weights_inputs(args))
    inputs.update(_dataset_inputs(_get(_get(config, "data"), "init_args")))
    unique: dict[Path, str] = {}
    for key, path in outputs.items():
        unique.setdefault(Path(path).resolve(), key)  # export_path may be the run folder's own: one file
    check_outputs({key: path for path, key in unique.items()}, inputs, overwrite=True)


def shipped_config_names(argv: list[str]) -> list[str]:
    """`--config gate` (or `configs/gate.yaml` outside a checkout) -> the config shipped in the package."""
    from sammoe.assets import shipped_config

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            found = shipped_config(out[i + 1])
            out[i + 1] = str(found) if found else out[i + 1]
        elif arg.startswith("--config="):
            found = shipped_config(arg.split("=", 1)[1])
            out[i] = f"--config={found}" if found else arg
    return out


def main(argv: list[str]) -> int:
    """Run a LightningCLI subcommand; `argv` starts with the subcommand (`fit`, ...)."""
    os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user asks for it
    if list(argv) == sys.argv[1:]:
        sys.argv[1:] = shipped_config_names(sys.argv[1:])  # Lightning's DDP launcher re-runs sys.argv
    argv = shipped_config_names(argv)
    from jsonargparse import ArgumentError
    from lightning.pytorch import LightningDataModule, LightningModule

    import sammoe.lit  # noqa: F401  (imports the modules so that short class names resolve)

    cli_class, save_config = _build_cli_classes()
    try:
        cli = cli_class(
            model_class=LightningModule,  # InteractiveModule subclasses and RouterTraining
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=save_config,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"exit_on_error": False},
            # from the console script argv is sys.argv[1:]: let Lightning read it
            # (its DDP launcher re-runs it)
            args=None if list(argv) == sys.argv[1:] else list(argv),
        )
    except ArgumentError as err:
        print(f"sammoe: error: bad configuration: {_one_line(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:
        user = _user_error(err)
        if user is None:
            raise
        print(f"sammoe: error: {_one_line(str(user))}", file=sys.stderr)
        return 2
    finally:
        _finish_wandb()
    return 1 if getattr(cli.model, "failed", 0) else 0  # a cohort prediction with failed cases


def _finish_wandb() -> None:
    """Close this process's W&B run (if any) so its offline files are complete when the command returns."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
