"""The one way sammoe writes a file, and the check that no output can replace an input.

Every output goes through ``write_file``: the content is written to a temp file with a random name created
exclusively in the target folder (``tempfile.mkstemp``: ``O_CREAT | O_EXCL``, so a planted link is never
followed), flushed to disk, given the permissions of a normal new file (0666 less the umask, not mkstemp's
0600, so colleagues can read a shared run) and renamed over the target in one step. A reader sees the old
file or the new one, never half of one, and a failure leaves nothing behind. A disk that refuses the write
(full, over quota, read-only, permission denied, I/O error) is one line naming the file and the fix; the temp
file is removed and a file already at the target is left as it was. A file already complete in the target
folder (a verified download) is moved in by ``move_into_place``: the same rename and permissions, and it stays
where it was when the disk refuses.

``write_files`` writes several outputs all or none: each to its own temp file, renamed only when every one was
written, so a failure (or SIGTERM, turned into SystemExit while a write runs in the main thread) leaves no
output and no temp file.

``check_outputs`` runs before any long work: every output is compared with every input (a file, any file
inside an input folder such as a DICOM series, and the data files an ``.mhd`` or ``.nhdr`` header names:
``data_files``) and with the other outputs, existing outputs need
``overwrite``, and each target folder must accept a new file: one is created there (exclusively, under a
random name) and removed, which also catches what ``os.access`` cannot see for root (a read-only file system,
``/proc``). A refusal leaves nothing on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from sammoe.errors import DataError

Writer = Callable[[Path], None]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# what the disk or the folder answers (not a bug in a writer): turned into one line with the fix
_DISK_ERRORS = _NO_SPACE | {errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}
_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def _reason(err: OSError) -> str:
    return _REASONS.get(err.errno, (err.strerror or type(err).__name__).lower())


def _fix(err: OSError) -> str:
    return "free some space or choose another folder" if err.errno in _NO_SPACE else "choose another folder"


class _Terminated(SystemExit):
    """SIGTERM arrived while a file was being written: the temp files go, then the process exits."""


def _raise_on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated(128 + signum)


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """While writing in the main thread with SIGTERM's default action (die at once, temp files left), make
    it raise instead, so the ``except BaseException`` cleanup runs as for Ctrl-C. A handler someone else
    installed is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except (ValueError, OSError):
        previous = None
    if previous is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _new_temp(path: Path, suffix: str) -> tuple[int, Path]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    return fd, Path(name)


def _fill(fd: int, tmp: Path, content: bytes | Writer) -> None:
    if isinstance(content, (bytes, bytearray, memoryview)):
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
    else:
        os.close(fd)
        content(tmp)


def write_file(path: str | os.PathLike[str], content: bytes | Writer, *, suffix: str = "") -> Path:
    """Write ``content`` (bytes, or a function that writes a given path) to ``path`` atomically.

    ``suffix`` is the temp file's ending, for writers that choose the format by name (``.nii.gz``).
    """
    return write_files([(path, content, suffix)])[0]


_STAGED: dict[Path, Path] = {}  # temp file -> the output it becomes, while write_files runs


def write_files(contents: Sequence[tuple[str | os.PathLike[str], bytes | Writer, str]]) -> list[Path]:
    """Write each ``(path, content, suffix)`` (as ``write_file``) all or none: every content goes to its temp
    file first; only when all are written are they renamed into place. A failure, Ctrl-C or SIGTERM before
    that leaves no output and no temp file."""
    staged: list[tuple[Path, Path]] = []
    current: Path | None = None
    try:
        with _sigterm_raises():
            for target, content, suffix in contents:
                current = Path(target)
                fd, tmp = _new_temp(current, suffix)
                staged.append((tmp, current))
                _STAGED[tmp] = current
                _fill(fd, tmp, content)
            for tmp, path in staged:
                current = path
                move_into_place(tmp, path)  # flushed to disk, umask permissions, one rename
    except BaseException as err:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):  # the error that stopped the write is the one to report
                tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and current is not None:
            raise _write_error(current, err) from err
        raise
    finally:
        for tmp, _ in staged:
            _STAGED.pop(tmp, None)
    return [path for _, path in staged]


def move_into_place(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Put the complete file ``source`` (in ``path``'s folder) at ``path`` by one rename, with the umask's
    permissions. When the disk refuses, ``source`` stays where it was (a verified download is not lost) and
    ``path`` is unchanged; the error is one line, as for ``write_file``."""
    source, path = Path(source), Path(path)
    try:
        with open(source, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(source, new_file_mode())
        os.replace(source, path)
    except OSError as err:
        raise _write_error(path, err) from err
    return path


def _write_error(path: Path, err: OSError) -> Exception:
    """A disk's refusal as one line naming the file and the fix; any other error as it was."""
    if err.errno not in _DISK_ERRORS:
        return err
    path = _STAGED.get(path, path)  # a writer that writes its temp file through write_file: the output
    kept = " (the existing file is unchanged)" if path.exists() else ""
    return DataError(f"cannot write {path}: {_reason(err)}{kept}; {_fix(err)}")


def _refuses_new_files(folder: Path) -> OSError | None:
    """Create a file in ``folder`` exclusively under a random name and remove it: the error if that fails."""
    try:
        fd, name = tempfile.mkstemp(prefix=".sammoe-write-check.", dir=folder)
    except OSError as err:
        return err
    os.close(fd)
    os.unlink(name)
    return None


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_file(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to a log that grows as work finishes (each line whole: one write of one line, so a
    killed run loses at most the line being written, never an earlier one)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line.rstrip("\n") + "\n")


_HEADER_BYTES = 1 << 16  # a detached header is a few lines; the data of an attached one is never read
_MAX_PATTERN_FILES = 100_000
_METAIO_SUFFIXES = (".mhd", ".mha")
_NRRD_SUFFIXES = (".nhdr", ".nrrd")


def _pattern_files(value: str) -> list[str] | None:
    """``fmt min max step [subdim]`` (NRRD; MetaImage's ``fmt min max step``): the names it expands to."""
    parts = value.split()
    if len(parts) not in (4, 5) or "%" not in parts[0]:
        return None
    try:
        first, last, step = (int(v) for v in parts[1:4])
        if step == 0:
            return None
        stop = last + (1 if step > 0 else -1)
        return [parts[0] % i for i in range(first, stop, step)[:_MAX_PATTERN_FILES]]
    except (TypeError, ValueError):
        return None


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The other files an image header names for its voxels: the ``ElementDataFile`` of a MetaImage
    (``.mhd``/``.mha``) or the ``data file`` of a NRRD (``.nhdr``/``.nrrd``): one file, a ``LIST`` of them or
    a numbered pattern, relative to the header's folder. Reads only the small text header (no torch, no
    image library); [] for other formats, inline data or a header that cannot be read."""
    path = Path(path)
    name = path.name.lower()
    metaio = name.endswith(_METAIO_SUFFIXES)
    if not (metaio or name.endswith(_NRRD_SUFFIXES)):
        return []
    try:
        with open(path, "rb") as handle:
            head = handle.read(_HEADER_BYTES)
    except OSError:
        return []
    lines = head.decode("latin-1").splitlines()
    names: list[str] = []
    for i, line in enumerate(lines):
        if not metaio and not line.strip():
            break  # end of a NRRD header: attached data follows
        if metaio:
            key, sep, value = line.partition("=")
            found = sep and key.strip().lower() == "elementdatafile"
        else:
            key, sep, value = line.partition(":")
            found = sep and re.sub(r"\s+", "", key).lower() == "datafile" and not line.startswith("#")
        if not found:
            continue
        value = value.strip()
        if value.upper() == "LOCAL" or not value:
            return []
        if value.split()[0].upper() == "LIST":
            rest = lines[i + 1 :]
            if not metaio and "" in (r.strip() for r in rest):
                rest = rest[: [r.strip() for r in rest].index("")]
            names = [t for r in rest for t in (r.split() if metaio else [r.strip()]) if t]
        else:
            names = _pattern_files(value) or [value]
        break
    folder = path.parent
    return [folder / Path(os.path.expanduser(n)) for n in names]


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Mapping[str, str | os.PathLike[str] | None],
    *,
    overwrite: bool = False,
) -> None:
    """Refuse, in one line naming the option and the fix, any output that would replace or sit inside an
    input, coincide with another output, exist already (without ``overwrite``) or land in a folder that is
    not a folder that accepts a new file (tried for real: ``os.access`` says yes to root everywhere). Keys are
    the option names used in messages (``--out``)."""
    resolved_inputs: list[tuple[str, Path]] = []
    for key, value in inputs.items():
        if value is None:
            continue
        resolved_inputs.append((key, Path(value).resolve()))
        resolved_inputs += [(f"{key}'s data file", f.resolve()) for f in data_files(value)]
    seen: dict[Path, str] = {}
    for option, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        target = path.resolve()
        for in_option, source in resolved_inputs:
            if target == source or (source.is_dir() and _inside(target, source)):
                raise DataError(
                    f"{option} {path}: would replace "
                    f"{'the input' if target == source else 'a file inside the input'} "
                    f"{in_option} {source}; choose an output path outside the inputs"
                )
        if target in seen:
            raise DataError(f"{option} {path}: also given as {seen[target]}; give each output its own path")
        seen[target] = option
        if target.is_dir():
            raise DataError(f"{option} {path}: is a folder; give a file path")
        if target.exists() and not overwrite:
            raise DataError(
                f"{option} {path}: already exists; choose another path or pass --overwrite "
                "(overwrite=True in Python)"
            )
        folder = target.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise DataError(f"{option} {path}: {folder} is a file, not a folder; choose another output path")
        if (err := _refuses_new_files(folder)) is not None:
            why = _REASONS.get(err.errno) or f"the folder refuses new files: {_reason(err)}"  # /proc: ENOENT
            raise DataError(f"{option} {path}: cannot write in {folder} ({why}); {_fix(err)}")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (weights of several GB never sit in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
