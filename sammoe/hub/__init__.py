"""Named model weights: the registry, their cache in the user cache folder, and the one function that
downloads.

Only ``fetch`` touches the network; importing this module, ``cached``, ``list_models`` and
``resolve_checkpoint`` never do, so loading a model never downloads behind the user's back.

Cache layout, per name (root: ``SAMMOE_CACHE``, else ``platformdirs.user_cache_dir("sammoe")``)::

    weights/<name>/<file>                 complete, sha256-verified weights (appears by one rename)
    weights/<name>/<file>.json            manifest: repo, revision, commit, size, sha256 (written last)
    weights/<name>/<file>.<sha>.part      a download in progress; never read as weights, resumed by fetch

A file counts as cached only with its manifest and the manifest's size, so an interrupted or corrupted
download can never be taken for a complete one. The expected sha256 is the hub's: for LFS files its
``X-Linked-Etag``/``ETag`` header is the file's sha256 (read with ``huggingface_hub.get_hf_file_metadata``).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sammoe.environment import seconds_from_env
from sammoe.errors import CheckpointError, ConfigError
from sammoe.files import move_into_place, sha256_file, write_file
from sammoe.hub.transfer import (
    ANSWER_ENV,
    ANSWER_TIMEOUT,
    BUDGET,
    BUDGET_ENV,
    READ_TIMEOUT,
    READ_TIMEOUT_ENV,
    _download,
    _remote,
    _why,
    human_size,
)

CACHE_ENV = "SAMMOE_CACHE"
DEMO = "demo"  # the phantom model shipped inside the package: never downloaded, never cached
SEEDED = "seeded"  # the untrained seeded initialisation: tests only, refused where a user chooses a model


@dataclass(frozen=True)
class ModelEntry:
    """Where a named backbone lives on the hub."""

    repo: str
    file: str
    revision: str = "main"
    about: str = ""


TURBO = "turbo"  # the default model once cached
REGISTRY: dict[str, ModelEntry] = {
    TURBO: ModelEntry(
        repo="blueyo0/SAM-Med3D",
        file="sam_med3d_turbo.pth",
        about="SAM-Med3D-turbo, the released ViT-B backbone (128^3 crops)",
    ),
}


@dataclass(frozen=True)
class ModelRow:
    """One line of ``sammoe weights list``; path, size and sha256 are None until the weights are fetched."""

    name: str
    repo: str
    file: str
    path: Path | None
    size: int | None
    sha256: str | None


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """What a ``--checkpoint`` value names: a weights file (``path``), or the shipped phantom model
    (``is_demo``, ``path`` None). ``name`` is the registry name, ``"demo"``, or None for a plain path."""

    path: Path | None
    name: str | None
    is_demo: bool = False


def cache_dir() -> Path:
    """Root of sammoe's cache: ``SAMMOE_CACHE`` when set, else the platform's user cache folder."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("sammoe"))


def _entry(name: str) -> ModelEntry:
    if name == DEMO:
        raise ConfigError(f"{DEMO!r} is the phantom model shipped with sammoe; there is nothing to download")
    entry = REGISTRY.get(name)
    if entry is None:
        known = ", ".join(sorted(REGISTRY))
        raise ConfigError(f"unknown model {name!r}; named models: {known} (and {DEMO}, shipped)")
    return entry


def _paths(name: str, entry: ModelEntry) -> tuple[Path, Path]:
    folder = cache_dir() / "weights" / name
    return folder / entry.file, folder / f"{entry.file}.json"


def _read_manifest(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # absent, unreadable, half-written, absurd: not an entry
        return None
    return record if isinstance(record, dict) else None


def cached(name: str, *, verify: bool = False) -> Path | None:
    """The cached weights of ``name``, or None when they were never fetched or are incomplete.

    The cheap check (always) compares the file's size with its manifest; ``verify=True`` also re-hashes the
    file and raises CheckpointError, naming the file and the fix, when it changed since it was verified.
    """
    entry = _entry(name)
    target, manifest = _paths(name, entry)
    record = _read_manifest(manifest)
    if record is None or record.get("file") != entry.file or not target.is_file():
        return None
    if target.stat().st_size != record.get("size"):
        return None
    if verify and sha256_file(target) != record.get("sha256"):
        raise CheckpointError(
            f"{target}: sha256 differs from the one verified when it was downloaded (the file changed on "
            f"disk); run `sammoe weights fetch {name} --force`"
        )
    return target


def list_models() -> list[ModelRow]:
    """Every named model with its cached file (None when not fetched); never touches the network."""
    rows = []
    for name, entry in REGISTRY.items():
        path = cached(name)
        record = _read_manifest(_paths(name, entry)[1]) if path is not None else None
        rows.append(
            ModelRow(
                name=name,
                repo=entry.repo,
                file=entry.file,
                path=path,
                size=None if record is None else record.get("size"),
                sha256=None if record is None else record.get("sha256"),
            )
        )
    return rows


def resolve_checkpoint(value: str | os.PathLike[str], *, verify: bool = False) -> ResolvedCheckpoint:
    """``"demo"``: the shipped phantom model; a registry name (``"turbo"``): its cached file, or
    CheckpointError saying how to fetch it; anything else: a path (the loaders check that it exists).

    A name wins over a file of the same name in the working folder; write ``./turbo`` for the file.
    """
    if isinstance(value, str) and value == DEMO:
        return ResolvedCheckpoint(path=None, name=DEMO, is_demo=True)
    if isinstance(value, str) and value in REGISTRY:
        path = cached(value, verify=verify)
        if path is None:
            raise CheckpointError(
                f"the {value} weights are not in the cache ({_paths(value, REGISTRY[value])[0].parent}); "
                f"run `sammoe weights fetch {value}` once"
            )
        return ResolvedCheckpoint(path=path, name=value)
    return ResolvedCheckpoint(path=Path(value).expanduser(), name=None)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fetch(name: str, endpoint: str | None = None, force: bool = False) -> Path:
    """Download the named weights into the cache (resuming a partial download), check their sha256 against
    the hub's and return the cached file. Already cached: returns it without touching the network, unless
    ``force``. ``endpoint``: the hub's base URL (default: ``HF_ENDPOINT``, else huggingface.co)."""
    entry = _entry(name)
    target, manifest = _paths(name, entry)
    if not force and (hit := cached(name)) is not None:
        _say(
            f"{name}: already downloaded, {hit} ({human_size(hit.stat().st_size)}); "
            "--force downloads it again"
        )
        return hit

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(
            f"{name}: cannot create the cache folder {target.parent} ({_why(err)}); set {CACHE_ENV} to a "
            "writable folder"
        ) from err
    limits = seconds_from_env(READ_TIMEOUT_ENV, READ_TIMEOUT), seconds_from_env(BUDGET_ENV, BUDGET)
    deadline = time.monotonic() + limits[1]  # the whole fetch: the hub's answer and the download
    answer = seconds_from_env(ANSWER_ENV, ANSWER_TIMEOUT)  # the hub's answer, however it trickles in
    remote = _remote(name, entry, endpoint, limits[0], min(time.monotonic() + answer, deadline))
    # the part file is named after the sha256 it should reach: bytes of another version are never resumed
    part = target.parent / f"{entry.file}.{remote.sha256[:16]}.part"
    for stale in target.parent.glob(f"{glob.escape(entry.file)}.*.part"):
        if stale != part or force:
            stale.unlink(missing_ok=True)
    done = part.stat().st_size if part.exists() else 0
    if done > remote.size:
        part.unlink()
        done = 0
    free = shutil.disk_usage(target.parent).free
    if free < remote.size - done:  # fail now rather than at 90 % with a disk-full error
        raise CheckpointError(
            f"{name}: {human_size(remote.size - done)} to download but {human_size(free)} free in "
            f"{target.parent}; free some space or set {CACHE_ENV} to another folder"
        )
    resuming = f", resuming at {human_size(done)}" if done else ""
    _say(f"{name}: {entry.repo}/{entry.file}, {human_size(remote.size)}{resuming} -> {target}")
    if done < remote.size:  # a complete part file (its move failed last time) is only checked and moved
        _download(name, entry, remote, part, (limits[0], deadline))

    got = sha256_file(part)
    if got != remote.sha256:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"{name}: downloaded {entry.file} has sha256 {got[:12]}... "
            f"but the hub lists {remote.sha256[:12]}...; "
            f"the damaged download was deleted, run `sammoe weights fetch {name}` again"
        )
    # no old manifest may vouch for the new file while it moves in; the new manifest is written last
    manifest.unlink(missing_ok=True)
    move_into_place(part, target)  # verified bytes, moved in by one rename; kept as the part file if refused
    record = {
        "name": name,
        "repo": entry.repo,
        "file": entry.file,
        "revision": entry.revision,
        "commit": remote.commit,
        "size": remote.size,
        "sha256": remote.sha256,
    }
    write_file(manifest, (json.dumps(record, indent=2) + "\n").encode())
    _say(f"{name}: sha256 {remote.sha256[:12]}... verified; cached at {target}")
    return target


SEEDED_REFUSAL = (
    "--checkpoint seeded is an untrained model for tests; choose turbo, demo or a weights file (./seeded for "
    "a file of that name)"
)


def choose_checkpoint(
    checkpoint: str | os.PathLike | ResolvedCheckpoint | None, *, untrained_ok: bool = False
) -> ResolvedCheckpoint:
    """The model the user asked for; None means turbo if its weights are cached. Refuses in one line, before
    any image is read, when nothing was chosen and nothing is cached, and for ``"seeded"`` (the untrained
    initialisation: only with ``untrained_ok``; a file of that name is ``./seeded``). An already resolved
    checkpoint is returned as it is (a command resolves the model once)."""
    if isinstance(checkpoint, ResolvedCheckpoint):
        return checkpoint
    if isinstance(checkpoint, str) and checkpoint == SEEDED:
        if not untrained_ok:
            raise CheckpointError(SEEDED_REFUSAL)
        return ResolvedCheckpoint(path=None, name=SEEDED)
    if checkpoint is None:
        if cached(TURBO) is None:
            raise CheckpointError(
                "no model chosen and no SAM-Med3D-turbo weights cached: run `sammoe weights fetch turbo` "
                f"(once, {REGISTRY[TURBO].repo} on Hugging Face), or choose the phantom-only demo model with "
                '`--checkpoint demo` (Python: Predictor.load("demo"))'
            )
        checkpoint = TURBO
    return resolve_checkpoint(checkpoint)
