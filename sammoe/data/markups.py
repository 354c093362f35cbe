"""3D Slicer markups files (``.mrk.json``) as clicks: what people who place points in Slicer give the CLI.

``sammoe segment --clicks points.mrk.json`` reads them through ``read_markups``, which returns the same
document as a ``--clicks`` JSON file (``{"space": "ras", "targets": [{"name", "points", "labels"}]}``).

How Slicer's format maps onto targets (decided here; Slicer has no notion of a negative click):

- One point list (``"type": "Fiducial"``) is one target, named by the list's ``name`` (else ``target_<i>``),
  in file order, so target i gets label value i. Other markups types (lines, curves, planes, ROIs) are
  refused.
- A control point is a negative click when its ``label`` starts with ``-`` or ``neg`` (``-1``, ``neg-2``,
  ``negative``) or its ``description`` is ``negative``; every other point is positive. Points whose
  ``positionStatus`` is not ``defined`` (unplaced or being placed) are skipped.
- ``coordinateSystem`` ``LPS`` (Slicer's file default) or ``RAS``; ``coordinateUnits`` ``mm`` or ``um``. The
  positions are world coordinates: they land on the image when it was loaded in Slicer without a transform.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.errors import DataError

SUFFIX = ".mrk.json"
_TO_MM = {"mm": 1.0, "um": 1e-3}
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def is_markups(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(SUFFIX)


def _negative(point: dict[str, Any]) -> bool:
    label = str(point.get("label") or "").strip().lower()
    description = str(point.get("description") or "").strip().lower()
    return label.startswith(("-", "neg")) or description == "negative"


def _units(node: dict[str, Any], where: str) -> float:
    units = node.get("coordinateUnits", "mm")
    if isinstance(units, list) and units:  # DICOM code triplet: [code, scheme, meaning]
        units = units[0]
    if units not in _TO_MM:
        raise DataError(f"{where}: coordinateUnits {units!r} is not mm or um; save the markups in mm")
    return _TO_MM[units]


def _target(node: Any, index: int, file: Path) -> dict[str, Any]:
    where = f"{file}: markups node {index + 1}"
    if not isinstance(node, dict):
        raise DataError(f"{where} is not an object; save the point list from Slicer again")
    name = node.get("name") or f"target_{index + 1}"
    where = f"{file}: markups node {index + 1} ({name!r})"
    if node.get("type") != "Fiducial":
        raise DataError(
            f"{where} is a {node.get('type')!r}, not a point list; place clicks as a point list (Fiducial)"
        )
    system = str(node.get("coordinateSystem", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise DataError(f"{where}: coordinateSystem {system!r} is not LPS or RAS")
    scale = _units(node, where)
    points, labels = [], []
    for point in node.get("controlPoints") or []:
        if not isinstance(point, dict) or point.get("positionStatus", "defined") != "defined":
            continue
        position = point.get("position")
        try:
            xyz = np.asarray(position, dtype=np.float64).reshape(3)
        except (TypeError, ValueError):
            raise DataError(
                f"{where}: control point {point.get('label')!r} has no [x, y, z] position"
            ) from None
        xyz = xyz * scale * (_LPS_TO_RAS if system == "LPS" else 1.0)
        points.append([float(v) for v in xyz])
        labels.append(0 if _negative(point) else 1)
    if not points:
        raise DataError(f"{where} has no placed control points; place at least one point in Slicer")
    return {"name": str(name), "points": points, "labels": labels}


def read_markups(path: str | os.PathLike) -> dict[str, Any]:
    """A Slicer ``.mrk.json`` file as a clicks document in RAS millimetres (see the module docstring)."""
    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(f"{file}: markups file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(
            f"{file}: not valid JSON ({type(err).__name__}); save the markups from Slicer again"
        ) from None
    nodes = data.get("markups") if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not nodes:
        raise DataError(f'{file}: no "markups" list; this is not a Slicer markups file')
    return {"space": "ras", "targets": [_target(node, i, file) for i, node in enumerate(nodes)]}
