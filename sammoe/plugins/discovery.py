"""Find expert plugins through the `sammoe.experts` entry-point group, without importing torch.

Every plugin is inspected in isolation: an import error, a bad manifest, a missing or corrupt weights file,
an incompatible API or backbone, or a name claimed by two distributions marks that plugin `broken` or
`incompatible` with a one-line reason and never stops the others from loading.

`SAMMOE_EXPERTS` selects plugins for reproducible runs: unset = all installed, `none` (or empty) = none,
`a,b` = exactly those (a selected name that is not installed is reported as broken).

Plugin code (the entry point's import and its manifest function) runs in a daemon thread with stdout sent to
stderr, so a plugin that prints cannot corrupt `--json` output, and one that does not answer within
`SAMMOE_PLUGIN_TIMEOUT` seconds (default 10) is reported as broken while the others load.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from sammoe.environment import seconds_from_env
from sammoe.errors import PluginError
from sammoe.plugins import checksums as _weights
from sammoe.plugins.manifest import ENTRY_POINT_GROUP, ExpertManifest, IncompatiblePlugin

ENV_VAR = "SAMMOE_EXPERTS"
TIMEOUT_ENV = "SAMMOE_PLUGIN_TIMEOUT"
DEFAULT_TIMEOUT = 10.0
Status = Literal["ok", "incompatible", "broken"]


class PluginWarning(UserWarning):
    """An installed expert plugin was skipped (broken or incompatible)."""


@dataclass(frozen=True)
class ExpertRecord:
    """One discovered expert: its manifest when readable, its status and, if not ok, why."""

    name: str
    status: Status
    reason: str = ""
    manifest: ExpertManifest | None = None
    distribution: str | None = None
    dist_version: str | None = None
    entry_point: str | None = None
    weights_path: Path | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def origin(self) -> str:
        if self.distribution is None:
            return "not installed"
        return f"{self.distribution} {self.dist_version or ''}".strip()

    def with_status(self, status: Status, problem: str, fix: str) -> ExpertRecord:
        return replace(self, status=status, reason=_reason(self, problem, fix))


def _reason(record: ExpertRecord, problem: str, fix: str) -> str:
    """The one line a user sees: which plugin, what is wrong, how to fix it."""
    text = f"expert {record.name!r} ({record.origin}): {problem}; {fix}"
    return " ".join(text.split())


def selection_from_env(environ: dict[str, str] | None = None) -> list[str] | None:
    """Names selected by SAMMOE_EXPERTS, or None for all installed plugins."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR)
    if raw is None:
        return None
    names = [part.strip() for part in raw.split(",") if part.strip()]
    if names == ["none"]:
        return []
    return list(dict.fromkeys(names))


_ALL = object()


# What plugin code may raise at import or in its manifest function. SystemExit and KeyboardInterrupt too: a
# plugin calling sys.exit(0) at import must not end `sammoe segment` silently with status 0.
PLUGIN_FAULTS = (Exception, SystemExit, KeyboardInterrupt)


class _NoAnswer(Exception):
    """Plugin code still running after the time limit (an endless loop, a blocked import)."""


def plugin_timeout() -> float:
    """Seconds plugin code may run for one plugin (``SAMMOE_PLUGIN_TIMEOUT``, default 10)."""
    return seconds_from_env(TIMEOUT_ENV, DEFAULT_TIMEOUT)


def _plugin_call(func: Any, timeout: float) -> Any:
    """``func()`` in a daemon thread, stdout to stderr; raises what it raised, or _NoAnswer after
    ``timeout`` seconds (the thread is left behind: Python cannot stop it, and it never blocks exit)."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = func()
        except BaseException as err:  # handed to the caller, which decides what a plugin may raise
            outcome["error"] = err

    thread = threading.Thread(target=work, name="sammoe-plugin", daemon=True)
    with contextlib.redirect_stdout(sys.stderr):
        thread.start()
        thread.join(timeout)
    if thread.is_alive():
        raise _NoAnswer(f"did not answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def discover(
    select: Iterable[str] | None | object = _ALL,
    *,
    backbone_fingerprint: str | None = None,
) -> list[ExpertRecord]:
    """Inspect installed expert plugins (all, or `select`; default: the SAMMOE_EXPERTS selection).

    `backbone_fingerprint`, when given, marks experts trained on other backbone weights incompatible.
    Returns one record per name, sorted by name; never raises for a broken plugin.
    """
    from_env = select is _ALL
    if from_env:
        select = selection_from_env()
    wanted = None if select is None else list(dict.fromkeys(select))  # type: ignore[arg-type]
    from sammoe import __version__ as sammoe_version

    timeout = plugin_timeout()
    by_name: dict[str, list[metadata.EntryPoint]] = defaultdict(list)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        by_name[ep.name].append(ep)

    records = []
    for name in sorted(by_name):
        if wanted is not None and name not in wanted:
            continue
        eps = by_name[name]
        if len(eps) > 1:
            records.append(_duplicate(name, eps))
            continue
        try:
            records.append(_inspect(eps[0], sammoe_version, backbone_fingerprint, timeout))
        except PLUGIN_FAULTS as err:  # a last guard: one plugin never stops discovery of the others
            dist, version = _dist_of(eps[0])
            record = ExpertRecord(name=name, status="broken", distribution=dist, dist_version=version)
            problem = f"inspecting it failed ({type(err).__name__}: {err})"
            records.append(
                record.with_status("broken", problem, "reinstall the plugin or report it to its authors")
            )
    for name in wanted or []:
        if name not in by_name:
            fix = (
                f"pip install its package or remove it from {ENV_VAR}"
                if from_env
                else "pip install its package"
            )
            missing = ExpertRecord(name=name, status="broken")
            records.append(missing.with_status("broken", "no installed distribution provides it", fix))
    return sorted(records, key=lambda r: r.name)


def _dist_of(ep: metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _duplicate(name: str, eps: list[metadata.EntryPoint]) -> ExpertRecord:
    owners = ", ".join(sorted(f"{d} {v}" for d, v in map(_dist_of, eps)))
    record = ExpertRecord(name=name, status="broken", distribution=owners)
    return replace(
        record,
        reason=f"expert {name!r} is provided by {len(eps)} distributions ({owners}); "
        "pip uninstall all but one of them",
    )


def _inspect(
    ep: metadata.EntryPoint, sammoe_version: str, backbone_fingerprint: str | None, timeout: float
) -> ExpertRecord:
    dist, version = _dist_of(ep)
    record = ExpertRecord(
        name=ep.name, status="broken", distribution=dist, dist_version=version, entry_point=ep.value
    )
    reinstall = f"reinstall it (pip install --force-reinstall {dist})" if dist else "reinstall it"
    upgrade = f"install a plugin version built for sammoe {sammoe_version}, or a sammoe that it supports"
    slow = f"fix the plugin, uninstall it, or raise {TIMEOUT_ENV}"
    try:
        factory = _plugin_call(ep.load, timeout)
    except _NoAnswer as err:
        return record.with_status("broken", f"importing entry point {ep.value!r} {err}", slow)
    except PLUGIN_FAULTS as err:
        return record.with_status(
            "broken", f"cannot import entry point {ep.value!r} ({type(err).__name__}: {err})", reinstall
        )
    if not callable(factory):
        return record.with_status(
            "broken",
            f"entry point {ep.value!r} is not a function (got {type(factory).__name__})",
            "point the entry point at a zero-argument function returning an ExpertManifest",
        )
    try:
        manifest = ExpertManifest.parse(_plugin_call(factory, timeout), source="the manifest")
    except _NoAnswer as err:
        return record.with_status("broken", f"{ep.value}() {err}", slow)
    except IncompatiblePlugin as err:
        return record.with_status("incompatible", str(err), upgrade)
    except PluginError as err:
        return record.with_status("broken", str(err), "fix the plugin's manifest or reinstall it")
    except PLUGIN_FAULTS as err:
        return record.with_status(
            "broken", f"{ep.value}() raised {type(err).__name__}: {err}", "fix the plugin's manifest function"
        )
    record = replace(record, manifest=manifest)

    if manifest.name != ep.name:
        return record.with_status(
            "broken",
            f"entry point {ep.name!r} returns a manifest named {manifest.name!r}",
            "make the entry-point name and the manifest name equal",
        )
    problem = manifest.incompatibility(sammoe_version)
    if problem:
        return record.with_status("incompatible", problem, upgrade)
    try:
        path = _weights.resolve(manifest.weights)
    except PluginError as err:
        fix = (
            reinstall
            if manifest.weights.package
            else "put the file there or fix weights.path in the manifest"
        )
        return record.with_status("broken", str(err), fix)
    record = replace(record, weights_path=path)
    problem = _weights.checksum_problem(path, manifest.weights.sha256)
    if problem:
        return record.with_status("broken", problem, f"the file is corrupt or was replaced; {reinstall}")
    if backbone_fingerprint is not None and manifest.backbone.fingerprint != backbone_fingerprint:
        return record.with_status(
            "incompatible",
            f"trained on backbone {manifest.backbone.preset} {manifest.backbone.fingerprint[:12]}..., "
            f"the loaded backbone is {backbone_fingerprint[:12]}...",
            "load the backbone weights the expert was trained on, or retrain the expert on this one",
        )
    return replace(record, status="ok", reason="")


def select_experts(
    names: Iterable[str] | None = None, *, backbone_fingerprint: str | None = None
) -> list[ExpertRecord]:
    """The experts to use in a run.

    With `names` (e.g. from a config file) every named expert must be ok, else PluginError with its reason.
    Without, all installed (or SAMMOE_EXPERTS-selected) experts that are ok are returned and each broken or
    incompatible one is reported as a PluginWarning and skipped.
    """
    if names is not None:
        names = list(names)
        records = discover(names, backbone_fingerprint=backbone_fingerprint)
        for record in records:
            if not record.ok:
                raise PluginError(record.reason)
        order = {name: i for i, name in enumerate(names)}
        return sorted(records, key=lambda r: order[r.name])
    records = discover(backbone_fingerprint=backbone_fingerprint)
    for record in records:
        if not record.ok:
            warnings.warn(f"skipping {record.status} plugin: {record.reason}", PluginWarning, stacklevel=2)
    return [record for record in records if record.ok]


def get_expert(name: str, **kwargs: Any) -> ExpertRecord:
    """The record of one expert by name (any status); PluginError if no distribution provides it."""
    (record,) = discover([name], **kwargs)
    if record.distribution is None:
        raise PluginError(f"{record.reason} (see `sammoe experts list` for the installed experts)")
    return record


def load_expert_weights(record: ExpertRecord) -> dict[str, Any]:
    """The expert's decoder state dict (safetensors, after the sha256 check). Imports torch."""
    if not record.ok or record.manifest is None:
        raise PluginError(record.reason or f"expert {record.name!r} is not usable")
    try:
        return _weights.load_state_dict(record.manifest.weights)
    except PluginError as err:
        raise PluginError(f"expert {record.name!r} ({record.origin}): {err}") from None


def load_router_bytes(record: ExpertRecord) -> tuple[Any, bytes]:
    """(path, bytes) of the expert's router file after the sha256 check; PluginError when it ships none."""
    if not record.ok or record.manifest is None:
        raise PluginError(record.reason or f"expert {record.name!r} is not usable")
    if record.manifest.router is None:
        raise PluginError(f"expert {record.name!r} ({record.origin}) ships no router")
    try:
        return _weights.read_checked(record.manifest.router)
    except PluginError as err:
        raise PluginError(f"expert {record.name!r} ({record.origin}): router: {err}") from None
