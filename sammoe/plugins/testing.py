"""Fake plugin distributions for tests (sammoe's and plugin authors'): no pip, no network, no torch.

`fake_expert(site, name, payload=b"...")` writes
`<site>/<dist>-<version>.dist-info/{METADATA,entry_points.txt}` and an importable package whose `manifest()`
returns the manifest dict; put `site` on `sys.path` (`monkeypatch.syspath_prepend(site)`) and
`importlib.metadata.entry_points(group="sammoe.experts")` finds it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sammoe.plugins.manifest import ENTRY_POINT_GROUP, SAMMOE_API

FAKE_FINGERPRINT = "f" * 64
_MODULE = """import json
import pathlib


def manifest():
    return json.loads((pathlib.Path(__file__).parent / "manifest.json").read_text())
"""


def write_distribution(
    site: Path,
    dist: str,
    version: str,
    entry_points: dict[str, str],
    files: dict[str, str | bytes] | None = None,
) -> Path:
    """A minimal installed distribution: dist-info with the entry points, plus `files` (relative paths)."""
    site = Path(site)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for rel, content in (files or {}).items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return info


def manifest_dict(name: str, module: str, payload: bytes, /, **overrides: Any) -> dict[str, Any]:
    """A valid manifest for a decoder expert whose weights (`payload`) are `<module>/decoder.safetensors`.

    A dict override is merged into the section of that name; anything else replaces the field.
    """
    data: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "sammoe_api": SAMMOE_API,
        "requires_sammoe": ">=0.1",
        "kind": "decoder",
        "task": {"classes": {name: 1}, "crop_size": [64, 64, 64]},
        "backbone": {"preset": "tiny", "fingerprint": FAKE_FINGERPRINT},
        "weights": {
            "package": module,
            "path": "decoder.safetensors",
            "sha256": hashlib.sha256(payload).hexdigest(),
        },
        "provenance": {"finetuned": False, "training_data": "test fixture"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def fake_expert(
    site: Path,
    name: str,
    /,
    *,
    payload: bytes = b"not really safetensors",
    dist: str | None = None,
    module: str | None = None,
    manifest: dict[str, Any] | None = None,
    module_source: str = _MODULE,
    entry_point: str | None = None,
    router_payload: bytes | None = None,
    **overrides: Any,
) -> str:
    """Install (by writing files) a fake expert distribution into `site`; returns its module name.
    `router_payload`: the bytes of a router file, shipped as `<module>/router.safetensors`."""
    module = module or f"fake_expert_{name}"
    dist = dist or f"fake-expert-{name.replace('_', '-')}"
    if router_payload is not None and manifest is None:
        digest = hashlib.sha256(router_payload).hexdigest()
        overrides["router"] = {"package": module, "path": "router.safetensors", "sha256": digest}
    data = manifest if manifest is not None else manifest_dict(name, module, payload, **overrides)
    files: dict[str, str | bytes] = {
        f"{module}/__init__.py": module_source,
        f"{module}/manifest.json": json.dumps(data),
        f"{module}/decoder.safetensors": payload,
    }
    if router_payload is not None:
        files[f"{module}/router.safetensors"] = router_payload
    write_distribution(site, dist, "1.0.0", {name: entry_point or f"{module}:manifest"}, files)
    return module


@contextmanager
def plugin_site(path: Path) -> Iterator[Path]:
    """A fresh directory first on sys.path for fake distributions; on exit it leaves sys.path and the
    modules imported from it are forgotten, so the next test can reuse module names."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    before = set(sys.modules)
    sys.path.insert(0, str(path))
    importlib.invalidate_caches()
    try:
        yield path
    finally:
        sys.path.remove(str(path))
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if origin.startswith(str(path)):
                del sys.modules[name]
        importlib.invalidate_caches()


def pip_install_target(projects: list[Path], target: Path, timeout: float = 300) -> None:
    """`pip install --no-deps --target TARGET PROJECT...`, a real install without touching the environment.

    Builds without isolation (no index needed) when the installed setuptools builds wheels by itself.
    """
    from importlib import metadata

    from packaging.version import Version

    args = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    try:
        if Version(metadata.version("setuptools")) >= Version("70.1"):
            args.append("--no-build-isolation")
    except metadata.PackageNotFoundError:
        pass
    done = subprocess.run([*args, *map(str, projects)], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"pip install failed:\n{done.stdout}{done.stderr}")
