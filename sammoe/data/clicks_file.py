"""Clicks files: the targets `sammoe segment --clicks FILE` (and batch prediction) reads.

A clicks file is JSON, ``{"space": "voxel"|"ras"|"lps", "targets": [{"name": str, "points": [[x, y, z], ...],
"labels": [1, 0, ...], "route": str}]}`` (``route``, optional: the decoder for that target alone, "foundation"
or an installed expert's name, checked against the model later), or a 3D Slicer markups file
(``*.mrk.json``, see ``sammoe.data.markups``), read into the same document. Voxel clicks are indices in the
order the array is stored (i, j, k; for a DICOM series: column, row, slice); ``ras``/``lps`` clicks are world
millimetres. Everything a user can get wrong is refused with one line naming the file: a misspelt key (a
clicks file whose ``"space"`` is misspelt would otherwise read millimetres as voxel indices), coordinates
that are strings or booleans, duplicate names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import Any

import numpy as np

from sammoe.data.markups import is_markups, read_markups
from sammoe.errors import ConfigError

SPACES = ("voxel", "ras", "lps")
# The same click given in voxels and in mm differs by float noise only; a tiny bias makes both round the same
# way at exact half-voxel positions.
_ROUND_EPS = 1e-6
_TOP_KEYS = {"space", "targets"}
# written beside the clicks by the napari plugin's save, for the record; not read
_RECORD_KEYS = {"image", "model", "results"}
_TARGET_KEYS = {"name", "points", "labels", "route"}


@dataclass(frozen=True)
class ClickTarget:
    """One target of a clicks file: its name, clicks (N x 3), labels (1 positive, 0 negative), space and
    chosen decoder (None: routed as usual)."""

    name: str
    points: list[list[float]]
    labels: list[int] | None
    space: str
    route: str | None = None


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def read_clicks_file(path: str | os.PathLike) -> list[ClickTarget]:
    """The targets of a clicks JSON or Slicer markups file, checked for shape and spelling (the coordinates
    are checked against the image later, where the image is known)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: clicks file not found")
    try:
        data = read_markups(file) if is_markups(file) else json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{file}: not valid JSON ({err})") from None
    except RecursionError:
        raise ConfigError(f'{file}: JSON nested too deeply; a clicks file is {{"targets": [...]}}') from None
    if not isinstance(data, dict) or not isinstance(data.get("targets"), list):
        raise ConfigError(f'{file}: expected {{"space": ..., "targets": [...]}} at the top level')
    unknown = sorted(set(data) - _TOP_KEYS - _RECORD_KEYS)
    if unknown:
        raise ConfigError(
            f"{file}: unknown top-level key(s) {unknown}; a clicks file has 'space' and 'targets' (and, as "
            "the napari plugin saves them, 'image', 'model' and 'results', which are not read)"
        )
    space = data.get("space", "voxel")
    if space not in SPACES:
        raise ConfigError(f"{file}: unknown coordinate system {space!r}; use one of {', '.join(SPACES)}")
    if not data["targets"]:
        raise ConfigError(f"{file}: empty target list; add at least one target with points")
    targets = [_target(file, i, item, space) for i, item in enumerate(data["targets"])]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{file}: target names must be unique; got {names}")
    return targets


def _target(file: Path, i: int, item: object, space: str) -> ClickTarget:
    where = f"{file}: target {i + 1}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be an object with 'points' (and 'labels', 'name')")
    unknown = set(item) - _TARGET_KEYS
    if unknown:
        raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; use name, points, labels, route")
    points = item.get("points")
    if not isinstance(points, list) or not points:
        raise ConfigError(f"{where} has an empty click list; give 'points': [[x, y, z], ...]")
    for point in points:
        if not (isinstance(point, list) and len(point) == 3 and all(_is_number(v) for v in point)):
            raise ConfigError(f"{where}: each click is three numbers [x, y, z]; got {json.dumps(point)[:60]}")
    labels = item.get("labels")
    if labels is not None and not (
        isinstance(labels, list) and all(_is_number(v) and v in (0, 1) for v in labels)
    ):
        raise ConfigError(f"{where}: 'labels' is a list of 1 (positive) and 0 (negative), one per click")
    name = item.get("name") or f"target_{i + 1}"
    if not isinstance(name, str):
        raise ConfigError(f"{where} name must be a string")
    route = item.get("route")
    if route is not None and not (isinstance(route, str) and route.strip()):
        raise ConfigError(
            f"{where} ({name!r}): 'route' names one decoder, \"foundation\" or an installed expert; got "
            f"{json.dumps(route)[:60]}"
        )
    return ClickTarget(name, points, None if labels is None else [int(v) for v in labels], space, route)


def round_voxel(points: Any) -> np.ndarray:
    """The voxel indices that click coordinates (voxel units, floats) fall in."""
    return np.floor(np.asarray(points, dtype=np.float64) + 0.5 + _ROUND_EPS).astype(np.int64)
