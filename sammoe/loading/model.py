"""The model `sammoe segment` and `Predictor.load` run: backbone + installed experts + gate."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sammoe.errors import CheckpointError, ConfigError, PluginError
from sammoe.hub import SEEDED, choose_checkpoint
from sammoe.loading.checkpoints import load_backbone, preset_of
from sammoe.loading.experts import expert_router, load_experts
from sammoe.loading.gate import load_gate
from sammoe.model.moe import SamMoE
from sammoe.model.router import router_summary
from sammoe.model.sam3d import SamMed3D

ROUTING_CHOICES = ("auto", "gate", "routers")


DEMO_WARNING = (
    "the demo model knows only sammoe's synthetic phantoms; its masks mean nothing on real scans (run "
    "`sammoe weights fetch turbo` for SAM-Med3D-turbo)"
)


def load_model(
    checkpoint: str | os.PathLike | None = None,
    *,
    preset: str = "auto",
    experts: Iterable[str] | str | None = None,
    gate: str | os.PathLike | None = None,
    route: str | None = None,
    routing: str = "auto",
) -> tuple[SamMed3D | SamMoE, dict[str, Any]]:
    """The model ``sammoe segment`` runs, and a description of it for the report.

    ``checkpoint``: a path; ``"turbo"``, the released SAM-Med3D-turbo weights once ``sammoe weights fetch
    turbo`` has cached them; ``"demo"``, the tiny foundation model shipped for the phantoms
    (``sammoe.assets.FOUNDATION_TINY``; its joint gate ``GATE_TINY`` with ``routing="gate"``), announced by a
    warning and in ``info["model"]["warning"]``; None: turbo when cached, else CheckpointError, never the demo
    model silently.
    Installed experts and a gate are used when present and compatible.
    ``experts``: None = every installed, compatible expert (``SAMMOE_EXPERTS`` honoured); "none" or [] = no
    experts; names = exactly those (each must be ok). Routing: the joint gate ``gate`` (for the shipped model
    with ``routing="gate"``, ``GATE_TINY``) when it was trained over exactly these experts; otherwise each
    expert's own router (the shipped model's default: on held-out phantoms they routed better than its gate),
    an expert without a usable one left out with a warning; with neither, the foundation alone with a
    warning. ``info["model"]["routing"]`` says which. ``routing`` "gate" or "routers" insists on one
    mechanism ("auto": as above). A forced ``route`` (an expert's name) needs neither.
    """
    from sammoe import assets
    from sammoe.model.moe import FOUNDATION

    # "seeded" only with an explicit preset (tests build the untrained model on purpose), and said so
    chosen = choose_checkpoint(checkpoint, untrained_ok=preset != "auto")
    shipped = chosen.is_demo
    checkpoint = assets.FOUNDATION_TINY if shipped else (SEEDED if chosen.name == SEEDED else chosen.path)
    if shipped and not Path(checkpoint).is_file():
        raise CheckpointError(
            f"the shipped demo model {checkpoint} is missing; create it with `make foundation` in the sammoe "
            "repository, or pass --checkpoint PATH"
        )
    backbone = load_backbone(checkpoint, preset)
    preset = preset_of(backbone)
    info: dict[str, Any] = {
        "model": {
            "name": chosen.name,
            "checkpoint": str(checkpoint),
            "preset": preset,
            "experts": [],
            "gate": None,
        }
    }
    if shipped or chosen.name == SEEDED:
        warning = DEMO_WARNING if shipped else f"the {preset} preset's seeded initialisation is untrained"
        info["model"]["warning"] = warning
        warnings.warn(warning, UserWarning, stacklevel=2)
    if isinstance(experts, str):
        experts = (
            [] if experts.strip() in ("none", "") else [e.strip() for e in experts.split(",") if e.strip()]
        )
        if experts == ["all"]:
            experts = None
    explicit = experts is not None
    names = None if experts is None else list(experts)
    if names == []:
        return backbone, info
    records = load_experts(backbone, names)
    decoders = {record.name: decoder for record, decoder in records}
    if not decoders:
        return backbone, info
    if routing not in ROUTING_CHOICES:
        raise ConfigError(f"routing {routing!r} unknown; choose one of {', '.join(ROUTING_CHOICES)}")
    if routing == "routers" and gate is not None:
        raise ConfigError("--routing routers ignores the gate; drop --gate or choose --routing gate")
    # The shipped model's gate only on request: its experts' own routers routed more targets right on every
    # held-out phantom seed measured (README, "The shipped models on phantoms no training used").
    gate_path = (
        Path(gate) if gate is not None else (assets.GATE_TINY if shipped and routing == "gate" else None)
    )
    moe = SamMoE(backbone, decoders)
    problem = None
    if routing == "routers":
        problem = "routing: routers was asked for"
    elif gate_path is None:
        problem = "no gate given (--gate PATH)"
    else:
        try:
            load_gate(moe, gate_path)
        except CheckpointError as err:
            if gate is not None or routing == "gate":
                raise
            problem = str(err)
    if problem is not None and route is not None and route != FOUNDATION:
        moe.eval()  # forced routing decodes with the named expert; the (untrained) gate decides nothing
        info["model"]["experts"] = list(decoders)
        return moe, info
    if problem is not None and gate is None and routing != "gate":
        routed = _with_routers(backbone, records)
        if routed is not None:
            info["model"]["experts"] = list(routed.experts)
            info["model"]["routing"] = "routers"
            info["model"]["routers"] = router_summary(routed.routers)
            return routed.eval(), info
        if routing == "routers":
            raise ConfigError(
                f"no expert among {', '.join(decoders)} ships a usable router (see the warnings); choose "
                "--routing gate or install experts with routers"
            )
    if problem is not None:
        if routing == "gate":
            raise ConfigError(f"--routing gate needs a gate trained over {', '.join(decoders)}: {problem}")
        if explicit and gate is None:
            raise ConfigError(
                f"experts {', '.join(decoders)} need a gate to route between them: {problem}; "
                "pass --gate PATH (train one with `sammoe fit --config configs/gate.yaml`) or --experts none"
            )
        warnings.warn(
            f"using the foundation decoder only: {problem}; and no expert ships a usable router; pass --gate "
            "(`sammoe fit --config configs/gate.yaml` trains one) or install experts that ship routers",
            UserWarning,
            stacklevel=2,
        )
        return backbone, info
    moe.eval()
    info["model"]["experts"] = list(decoders)
    info["model"]["routing"] = "gate"
    info["model"]["gate"] = str(gate_path)
    info["model"]["selector"] = {"mode": moe.selector.mode, "tau": float(moe.selector.tau)}
    return moe, info


def _with_routers(backbone: SamMed3D, records: list) -> SamMoE | None:
    """A SamMoE routed by the experts' own routers when no gate fits the installed set; an expert whose
    router is missing, broken or incompatible is left out with a one-line warning (None: none is left)."""
    from sammoe.plugins.discovery import PluginWarning

    routers, decoders = {}, {}
    for record, decoder in records:
        try:
            routers[record.name] = expert_router(backbone, record)
            decoders[record.name] = decoder
        except PluginError as err:
            warnings.warn(f"expert disabled: {err}", PluginWarning, stacklevel=3)
    if not routers:
        return None
    moe = SamMoE(backbone, decoders)
    moe.use_routers(routers)
    return moe
