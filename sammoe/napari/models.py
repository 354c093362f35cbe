"""The models the widget offers and loading one (no Qt): the shipped demo model, SAM-Med3D-turbo once
cached, or a checkpoint file; the installed experts from sammoe's plugin discovery; the devices here."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

DEMO = "demo"  # sammoe.hub's name of the phantom model shipped in the package
TURBO = "turbo"  # sammoe.hub's name of the released SAM-Med3D-turbo weights (after `sammoe weights fetch`)


@dataclass(frozen=True)
class ModelChoice:
    """``checkpoint``: "demo", "turbo" or a weights file. ``experts``: None = every installed, compatible
    expert (an incompatible one is skipped with a note); () = none; names = exactly those."""

    checkpoint: str = DEMO
    experts: tuple[str, ...] | None = None
    device: str = "auto"


def model_options() -> list[tuple[str, str]]:
    """(label, checkpoint) pairs for the model menu; turbo only when its weights are cached."""
    from sammoe import hub

    options = [("demo model (phantoms only)", DEMO)]
    try:
        if hub.cached(TURBO) is not None:
            options.append(("SAM-Med3D-turbo", TURBO))
    except Exception:  # a broken cache must not stop the widget from opening
        pass
    return options


def installed_experts() -> list[str]:
    """Names of the installed expert plugins that discovery reports usable (never raises)."""
    from sammoe.plugins.discovery import discover

    try:
        return [r.name for r in discover() if r.ok]
    except Exception:
        return []


def devices() -> list[str]:
    """The devices here; imports torch (seconds), so the widget asks in its worker, never at dock time."""
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return found


def load_predictor(choice: ModelChoice) -> tuple[Any, list[str]]:
    """The Predictor ``sammoe segment`` would build for these options, and the warnings it gave (the demo
    model's "phantoms only", skipped experts) as one-line notes. Raises ``SammoeError`` subclasses."""
    from sammoe.inference.predictor import Predictor

    experts: Any = None if choice.experts is None else (list(choice.experts) or "none")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.load(choice.checkpoint, experts=experts, device=choice.device)
    notes = list(dict.fromkeys(str(w.message).splitlines()[0] for w in caught if str(w.message)))
    return predictor, notes


def options() -> tuple[list[str], list[str]]:
    """(devices, installed experts) for the model panel; run in a worker (torch, plugin discovery)."""
    return devices(), installed_experts()
