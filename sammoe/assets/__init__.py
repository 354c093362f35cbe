"""Files shipped inside the package: the tiny foundation model and its gate, trained by the project
(`make foundation`, `make gate-asset`), a real MRI for the demo, and the training/evaluation configs (also
reachable as `configs/` in a checkout). Paths only; nothing is loaded here."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ASSETS = Path(str(resources.files("sammoe") / "assets"))

FOUNDATION_TINY = ASSETS / "foundation_tiny.safetensors"
"""The `tiny` preset trained on the phantom general classes (image encoder + prompt encoder + decoder E0)."""

GATE_TINY = ASSETS / "gate_tiny.safetensors"
"""A gate trained over FOUNDATION_TINY and the example experts under `experts/`."""

CONFIGS = Path(str(resources.files("sammoe") / "configs"))
"""The LightningCLI configs (`sammoe fit --config gate` finds `gate.yaml` here from any directory)."""


def shipped_config(name: str) -> Path | None:
    """The shipped config a bare name means (``gate``, ``gate.yaml``, ``experts/spinal_cord``, or
    ``configs/gate.yaml`` as the README writes it), unless ``name`` is a file here; None otherwise."""
    if Path(name).is_file():
        return None
    stem = name[len("configs/") :] if name.startswith("configs/") else name
    for candidate in (stem, f"{stem}.yaml", f"experts/{stem}", f"experts/{stem}.yaml"):
        path = CONFIGS / candidate
        if ".." not in Path(candidate).parts and path.is_file():
            return path
    return None
