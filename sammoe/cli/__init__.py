"""Every `sammoe` command: `main` (the dispatcher), `segment`, `weights`, `experts`, `train` (the LightningCLI
runs fit / validate / test / predict) and `demo`. Each command module parses its arguments and calls the
layers below; none holds logic another command or the Python API needs."""

from sammoe.cli.main import main

__all__ = ["main"]
