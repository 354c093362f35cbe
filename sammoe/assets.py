"""Files shipped inside the package: the tiny foundation model and its gate, trained by the project
(`make foundation`, `make gate-asset`), and a real MRI for the demo. Paths only; nothing is loaded here."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

ASSETS = Path(str(resources.files("sammoe") / "assets"))

FOUNDATION_TINY = ASSETS / "foundation_tiny.safetensors"
"""The `tiny` preset trained on the phantom general classes (image encoder + prompt encoder + decoder E0)."""

GATE_TINY = ASSETS / "gate_tiny.safetensors"
"""A gate trained over FOUNDATION_TINY and the example experts under `experts/`."""
