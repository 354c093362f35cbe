"""Command-line entry point: `sammoe <command>`.

Commands that are not Lightning trainer runs (`demo`, `experts`, `segment`) are dispatched to their own
typed entry functions before LightningCLI sees the arguments; everything else goes to LightningCLI.
Errors a user can cause print one line and exit with status 2.
"""

from __future__ import annotations

import signal
import sys
import threading
from importlib import import_module

from sammoe.errors import SammoeError

# command -> "module:function"; each function takes the remaining argv and returns an exit status.
_DISPATCH = {
    "demo": "sammoe.cli.demo:main",
    "experts": "sammoe.cli.experts:main",
    # LightningCLI trainer runs (sammoe/cli/train.py); the function gets the subcommand first
    "fit": "sammoe.cli.train:main",
    "validate": "sammoe.cli.train:main",
    "test": "sammoe.cli.train:main",
    "predict": "sammoe.cli.train:main",
    "segment": "sammoe.cli.segment:main",
    "weights": "sammoe.cli.weights:main",
}

_USAGE = """usage: sammoe <command> [options]

commands:
  fit         train with LightningCLI: `sammoe fit --config configs/gate.yaml` (`sammoe fit --help`)
  validate    evaluate on the validation split (Dice/NSD report in the run directory)
  test        evaluate on the test split: `sammoe test --config configs/evaluate.yaml`
  predict     segment a cohort of scans from prompt files: `sammoe predict --config predict ...`
  demo        run the end-to-end demonstration on an embedded default (no downloads, no GPU)
  experts     expert plugins: list, show, verify, package (`sammoe experts --help`)
  segment     segment structures in a volume from clicks (`sammoe segment --help`)
  weights     named model weights: fetch, list, path (`sammoe weights fetch turbo`)

options:
  -V, --version  print the sammoe version (and torch's) and exit
"""


class _Terminated(BaseException):
    """SIGTERM (`kill`, a scheduler's timeout), raised where the command is so that it unwinds like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated


def _trainer_misconfigured(err: BaseException) -> bool:
    """Lightning's MisconfigurationException (only looked up when Lightning is already imported)."""
    module = sys.modules.get("lightning.fabric.utilities.exceptions")
    kind = getattr(module, "MisconfigurationException", None)
    return kind is not None and isinstance(err, kind)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        from sammoe import __version__

        print(f"sammoe {__version__} (torch {version('torch')}, python {sys.version.split()[0]})")
        return 0
    target = _DISPATCH.get(argv[0])
    if target is None:
        print(
            f"sammoe: error: unknown command {argv[0]!r}; run `sammoe --help` for the list", file=sys.stderr
        )
        return 2
    module_name, func_name = target.split(":")
    rest = argv if module_name == "sammoe.cli.train" else argv[1:]  # LightningCLI parses the subcommand
    # Lightning handles SIGTERM itself during a trainer run; the other commands unwind as on Ctrl-C.
    own_sigterm = module_name != "sammoe.cli.train" and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if own_sigterm else None
    try:
        return _run(argv[0], module_name, func_name, rest)
    finally:
        if own_sigterm and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(command: str, module_name: str, func_name: str, rest: list[str]) -> int:
    resume = "; `sammoe weights fetch` resumes the partial download" if command == "weights" else ""
    try:
        return int(getattr(import_module(module_name), func_name)(rest) or 0)
    except SammoeError as err:
        print(f"sammoe: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: one line instead of a traceback through torch; 130 is the shell's code for SIGINT.
        print(
            f"sammoe: interrupted; {command} stopped, outputs are written only when complete{resume}",
            file=sys.stderr,
        )
        return 130
    except _Terminated:
        # SIGTERM: one line like Ctrl-C; 143 is the shell's code for a process ended by SIGTERM.
        print(
            f"sammoe: terminated (SIGTERM); {command} stopped, outputs are written only when "
            f"complete{resume}",
            file=sys.stderr,
        )
        return 143
    except BrokenPipeError:
        # `sammoe experts list | head`: the reader left; stop quietly like other Unix tools.
        sys.stderr.close()
        return 0
    except Exception as err:
        if module_name != "sammoe.cli.train" or not _trainer_misconfigured(err):
            raise
        # Lightning refuses a trainer option (`--trainer.accelerator gpu` without a GPU): the user's value
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        print(
            f"sammoe: error: trainer configuration: {first}; check the --trainer.* options "
            "(e.g. --trainer.accelerator auto or cpu)",
            file=sys.stderr,
        )
        return 2
