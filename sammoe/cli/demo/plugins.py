"""The two example expert plugins (experts/ in the repository) also travel inside the sammoe package, so that
`sammoe demo` runs from an installed wheel in an empty folder.

When they are not installed, the demo lays them out in its own run folder the way an installer would (the
module plus a minimal ``.dist-info`` with the entry point) and puts that folder on the path of its own
commands: plugin discovery finds them through entry points as usual, and the user's environment is left
untouched.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from sammoe.assets import ASSETS

EXAMPLES = ASSETS / "examples"
# entry-point name -> (distribution, module), as in experts/*/pyproject.toml
PLUGINS = {
    "spinal_cord": ("sammoe-expert-spinal-cord", "sammoe_expert_spinal_cord"),
    "textured_lesion": ("sammoe-expert-textured-lesion", "sammoe_expert_textured_lesion"),
}
VERSION = "0.1.0"


def lay_out(folder: Path) -> Path:
    """Copy the example plugins into ``folder`` as installed distributions; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (dist, module) in PLUGINS.items():
        target = folder / module
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(EXAMPLES / module, target, ignore=shutil.ignore_patterns("__pycache__"))
        info = folder / f"{module}-{VERSION}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {VERSION}\n")
        (info / "entry_points.txt").write_text(f"[sammoe.experts]\n{name} = {module}:manifest\n")
        (info / "INSTALLER").write_text("sammoe demo\n")
    return folder


def use(folder: Path) -> None:
    """Make the laid-out plugins visible to this process (the demo's commands get ``PYTHONPATH``)."""
    import importlib

    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
