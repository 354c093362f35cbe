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

import contextlib
import glob
import json
import math
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from sammoe.errors import CheckpointError, ConfigError
from sammoe.files import move_into_place, sha256_file, write_file

CACHE_ENV = "SAMMOE_CACHE"
DEMO = "demo"  # the phantom model shipped inside the package: never downloaded, never cached
READ_TIMEOUT_ENV = "SAMMOE_FETCH_TIMEOUT"  # seconds one network read may wait for bytes
BUDGET_ENV = "SAMMOE_FETCH_BUDGET"  # seconds a whole download may take (a server that drips bytes)
READ_TIMEOUT, BUDGET = 30.0, 4 * 3600.0
MAX_SIZE = 20 * 10**9  # a hub that announces more than this for one weights file is not believed
_TRIES = 3  # attempts in a row that bring no new byte before a download gives up


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


def human_size(size: int | None) -> str:
    if size is None:
        return "?"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


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


def _network_errors() -> tuple[type[BaseException], ...]:
    # huggingface_hub's own HTTP errors (and requests', its client before 1.0) are OSErrors; httpx and httpx2,
    # its clients since, raise their own transport errors. Catch exactly these, so a bug still shows a
    # traceback.
    errors: list[type[BaseException]] = [OSError]
    for client in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError, AttributeError):
            errors.append(import_module(client).HTTPError)
    return tuple(errors)


def _why(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


@dataclass(frozen=True)
class _Remote:
    url: str  # where the bytes are (a CDN url when the hub redirects)
    sha256: str
    size: int
    commit: str | None


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(
            f"{env}={raw!r} is not a number of seconds; set it above 0 or unset it (default {default:g})"
        )
    return value


def _remote(name: str, entry: ModelEntry, endpoint: str | None, read_timeout: float) -> _Remote:
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    endpoint = endpoint.rstrip("/") if endpoint else None  # a trailing slash would double in the URL
    base = endpoint or constants.ENDPOINT
    url = hf_hub_url(entry.repo, entry.file, revision=entry.revision, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url, timeout=read_timeout)
    except (*_network_errors(), ValueError) as err:  # ValueError: a header that is not a number
        raise CheckpointError(
            f"{name}: cannot get {entry.repo}/{entry.file} from {base} ({_why(err)}); check the network, or "
            "choose a mirror with --endpoint URL (or HF_ENDPOINT)"
        ) from err
    sha = (meta.etag or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", sha) or meta.size is None:
        raise CheckpointError(
            f"{name}: {base} gives no sha256 and size for {entry.repo}/{entry.file} (ETag {meta.etag!r}), "
            "so a download could not be checked; point --endpoint (or HF_ENDPOINT) at a Hugging Face hub"
        )
    if not 0 < meta.size <= MAX_SIZE:
        raise CheckpointError(
            f"{name}: {base} gives {entry.repo}/{entry.file} a size of {meta.size} bytes, not between 1 byte "
            f"and {human_size(MAX_SIZE)}; the answer is wrong, point --endpoint (or HF_ENDPOINT) at a hub"
        )
    return _Remote(url=meta.location, sha256=sha, size=meta.size, commit=meta.commit_hash)


class _Overdue(Exception):
    """The download took longer than its time budget."""


class _TooLong(Exception):
    """The server sent more bytes than the file has."""


def _stream(remote: _Remote, handle: Any, read_timeout: float, deadline: float, bar: Any) -> None:
    """One GET of the bytes ``handle`` lacks, appended as they arrive. Each read waits at most
    ``read_timeout``; the whole stream stops at ``deadline`` (time.monotonic), so a server that drips bytes
    cannot hold the download forever. What was written stays: every prefix of the file is resumable."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    done = handle.tell()
    headers = {"Accept-Encoding": "identity"}
    if done:
        headers["Range"] = f"bytes={done}-"
    with get_session().stream(
        "GET", remote.url, headers=headers, timeout=read_timeout, follow_redirects=True
    ) as response:
        hf_raise_for_status(response)
        if done and response.status_code == 200:  # the server ignored the Range: it sends the whole file
            handle.seek(0)
            handle.truncate()
            bar.update(-done)
            done = 0
        for piece in response.iter_bytes():  # pieces as they arrive, so the deadline is checked on each
            if time.monotonic() > deadline:
                raise _Overdue
            if done + len(piece) > remote.size:
                raise _TooLong
            handle.write(piece)
            done += len(piece)
            bar.update(len(piece))
    if done != remote.size:
        raise OSError(f"the connection ended at {done} of {remote.size} bytes")


def _download(name: str, entry: ModelEntry, remote: _Remote, part: Path, limits: tuple[float, float]) -> None:
    """Append the missing bytes to ``part`` with Range requests; a dropped or stalled connection is resumed
    where it stopped (``_TRIES`` times in a row without a new byte), within the time budget of ``limits``
    (read timeout, deadline)."""
    from huggingface_hub.utils import tqdm

    read_timeout, deadline = limits
    tries = 0
    have = part.stat().st_size if part.exists() else 0
    try:
        with (
            open(part, "ab") as handle,
            tqdm(
                total=remote.size, initial=have, unit="B", unit_scale=True, desc=entry.file, file=sys.stderr
            ) as bar,
        ):
            while True:
                before = handle.tell()
                try:
                    _stream(remote, handle, read_timeout, deadline, bar)
                    return
                except _network_errors() as err:
                    handle.flush()
                    tries = 1 if handle.tell() > before else tries + 1
                    if tries >= _TRIES or time.monotonic() > deadline or not _transient(err):
                        raise
                    time.sleep(min(1.0, read_timeout))
    except _Overdue:
        have = part.stat().st_size
        raise CheckpointError(
            f"{name}: download of {entry.file} too slow, {human_size(have)} of {human_size(remote.size)} in "
            f"{_seconds(BUDGET_ENV, BUDGET):g} s ({BUDGET_ENV}); run `sammoe weights fetch {name}` again to "
            "resume, or raise the budget"
        ) from None
    except _TooLong:
        part.unlink(missing_ok=True)  # more bytes than the file has: nothing in it is worth resuming
        raise CheckpointError(
            f"{name}: the server sent more than the {human_size(remote.size)} of {entry.file}; the download "
            f"was deleted, run `sammoe weights fetch {name}` again or choose another --endpoint"
        ) from None
    except _network_errors() as err:
        have = part.stat().st_size if part.exists() else 0
        raise CheckpointError(
            f"{name}: download of {entry.file} stopped at {human_size(have)} of {human_size(remote.size)} "
            f"({_why(err)}); run `sammoe weights fetch {name}` again to resume"
        ) from err


def _transient(err: BaseException) -> bool:
    """A dropped, refused or timed-out connection (worth resuming at once), not an HTTP error status."""
    return getattr(err, "response", None) is None  # HTTP errors (HfHubHTTPError) carry the response


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
    limits = _seconds(READ_TIMEOUT_ENV, READ_TIMEOUT), _seconds(BUDGET_ENV, BUDGET)
    deadline = time.monotonic() + limits[1]
    remote = _remote(name, entry, endpoint, limits[0])
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
