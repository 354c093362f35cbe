"""Expert weight files: locate, checksum, load (safetensors only, never pickle).

Locating and hashing need no torch; `load_state_dict` imports torch lazily.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from sammoe import files
from sammoe.errors import PluginError
from sammoe.plugins.manifest import WeightsRef

if TYPE_CHECKING:
    import torch


def resolve(ref: WeightsRef) -> Path:
    """The weights file on disk. Raises PluginError when it cannot be located."""
    if ref.package is not None:
        try:
            root = resources.files(ref.package)
        except Exception as err:  # importing the package may fail in any way
            raise PluginError(
                f"weights package {ref.package!r} is not importable ({type(err).__name__}: {err})"
            ) from None
        path = Path(str(root.joinpath(ref.path)))
    else:
        path = Path(os.path.expandvars(os.path.expanduser(ref.path)))
        if not path.is_absolute():
            raise PluginError(
                f"local weights path {ref.path!r} must be absolute (after ~ and $VAR expansion)"
            )
    if not path.is_file():
        raise PluginError(f"weights file {path} does not exist")
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime) so repeated discovery does not re-read it."""
    stat = os.stat(path)
    return _sha256_cached(os.fspath(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=256)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return files.sha256_file(path)


def checksum_problem(path: Path, expected: str) -> str | None:
    """Why the file fails its checksum (None when it matches)."""
    actual = sha256_file(path)
    if actual != expected:
        return f"sha256 of {path.name} is {actual[:12]}..., the manifest says {expected[:12]}..."
    return None


def read_checked(ref: WeightsRef) -> tuple[Path, bytes]:
    """The file's bytes, read once and checked against the manifest's sha256 (PluginError when they
    differ)."""
    path = resolve(ref)
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != ref.sha256:
        raise PluginError(
            f"sha256 of {path} is {actual[:12]}..., the manifest says {ref.sha256[:12]}...; "
            "the file is corrupt or was replaced, reinstall the plugin"
        )
    return path, data


def load_state_dict(ref: WeightsRef) -> dict[str, torch.Tensor]:
    """Read the file once, check its sha256 on those bytes, then parse them with safetensors."""
    from safetensors.torch import load

    path, data = read_checked(ref)
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own error types
        raise PluginError(f"{path} is not a readable safetensors file: {err}") from None
