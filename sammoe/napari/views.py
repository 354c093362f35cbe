"""What the widget reads of a session (no Qt, no torch): each target as a row, one operation's outcome, and
the clicks document that `sammoe segment --clicks` replays.

- ``Click``: one click (input voxel indices, positive or not).
- ``SessionTarget``: a target's own state in the session (clicks, chosen decoder, locked or not).
- ``TargetView``: a target as the table shows it; ``Update``: what one operation left.
- ``target_view(...)``, ``clicks_document(...)``: build them from the session's state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROUTED = None  # a target's route when the model decides (gate or routers)


@dataclass(frozen=True)
class Click:
    point: tuple[float, float, float]  # input voxel indices as clicked (floats; the Predictor rounds)
    positive: bool


@dataclass
class SessionTarget:
    id: int
    name: str
    clicks: list[Click] = field(default_factory=list)
    route: str | None = ROUTED  # the decoder the user chose for this target ("foundation", an expert)
    locked: bool = False  # its voxels are the user's (brush edits kept; the model no longer changes them)

    @property
    def active(self) -> bool:
        return any(c.positive for c in self.clicks)


@dataclass(frozen=True)
class TargetView:
    """One target as the UI shows it. ``value`` 0: pending (no positive click yet, no mask)."""

    id: int
    name: str
    clicks: tuple[Click, ...]
    value: int = 0
    route: str | None = ROUTED
    locked: bool = False
    expert: str | None = None
    routed_by: str | None = None
    confidence: float | None = None  # the gate's / router's probability of the expert that segmented it
    stability: float | None = None  # SAM's stability score, when the Predictor reports one
    volume_ml: float | None = None
    voxels: int | None = None


@dataclass(frozen=True)
class Update:
    """What one operation left: the label map (None when it did not change), every target, how it ran."""

    labels: np.ndarray | None
    targets: tuple[TargetView, ...]
    # "refine" (add_click), "add" (a new target decoded alone), "undo" (a refinement taken back, no model
    # call), "remove" (one target's mask dropped), "rerun" (one target decoded again from its clicks),
    # "predict" (every target decoded again), "edit" (the user's brush), "lock"/"unlock", "none"
    path: str
    seconds: float = 0.0
    encodes: int = 0
    box: tuple[slice, slice, slice] | None = None  # where ``labels`` changed (None: anywhere)
    decoders: tuple[str, ...] = ()  # the loaded model's decoders a target may be routed to


def _routing(result: Any) -> dict[str, float] | None:
    probs = getattr(result, "routing_probabilities", None)
    return probs if probs is not None else getattr(result, "gate", None)


def target_view(target: SessionTarget, value: int, result: Any, voxels: int | None, ml: float) -> TargetView:
    """The row of one target; ``result`` (a ``TargetResult``) None while it has no mask."""
    common = {"route": target.route, "locked": target.locked}
    if result is None or not value:
        return TargetView(target.id, target.name, tuple(target.clicks), value, **common)
    probs = _routing(result)
    stability = getattr(result, "stability", None)
    return TargetView(
        target.id,
        target.name,
        tuple(target.clicks),
        value,
        **common,
        expert=result.expert,
        routed_by=result.routed_by,
        confidence=None if not probs or result.expert not in probs else float(probs[result.expert]),
        stability=None if stability is None else round(float(stability), 4),
        volume_ml=None if voxels is None else round(voxels * ml, 3),
        voxels=voxels,
    )


def clicks_document(
    views: tuple[TargetView, ...], results: dict[int, Any], image: Any, info: Any
) -> dict[str, Any]:
    """The clicks file `sammoe segment --clicks` reads (voxel space, one entry per target with a mask, in
    label order; ``route`` only where the user chose a decoder) with each target's result beside it under
    ``results`` (the CLI ignores that key). The label value and what the user did are the session's."""
    shown = [v for v in views if v.value]
    targets = []
    for v in shown:
        entry: dict[str, Any] = {
            "name": v.name,
            "points": [list(c.point) for c in v.clicks],
            "labels": [int(c.positive) for c in v.clicks],
        }
        if v.route is not ROUTED:
            entry["route"] = v.route
        targets.append(entry)
    records = []
    for v in shown:
        if v.id not in results:
            continue
        # the same per-target record `sammoe segment --report` writes, with what the viewer shows
        record = {**results[v.id].summary(), "label": v.value, "voxels": v.voxels, "volume_ml": v.volume_ml}
        if v.locked:
            record["locked"] = True  # the label map holds the user's voxels, not the model's mask
        records.append(record)
    doc: dict[str, Any] = {"space": "voxel", "targets": targets, "results": records}
    if image is not None:
        doc["image"] = str(image)
    if isinstance(info, dict) and isinstance(info.get("model"), dict):
        doc["model"] = {k: v for k, v in info["model"].items() if k in ("name", "checkpoint", "preset")}
    return doc
