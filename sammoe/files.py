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

``check_outputs`` runs before any long work: every output is compared with every input (a file, or any file
inside an input folder such as a DICOM series) and with the other outputs, existing outputs need
``overwrite``, and each target folder must accept a new file: one is created there (exclusively, under a
random name) and removed, which also catches what ``os.access`` cannot see for root (a read-only file system,
``/proc``). A refusal leaves nothing on disk.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
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


def write_file(path: str | os.PathLike[str], content: bytes | Writer, *, suffix: str = "") -> Path:
    """Write ``content`` (bytes, or a function that writes a given path) to ``path`` atomically.

    ``suffix`` is the temp file's ending, for writers that choose the format by name (``.nii.gz``).
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=folder)
    except OSError as err:
        raise _write_error(path, err) from err
    tmp = Path(name)
    try:
        if isinstance(content, (bytes, bytearray, memoryview)):
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
        else:
            os.close(fd)
            content(tmp)
        move_into_place(tmp, path)  # flushed to disk, umask permissions, one rename
    except BaseException as err:
        with contextlib.suppress(OSError):  # the error that stopped the write is the one to report
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(path, err) from err
        raise
    return path


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
    resolved_inputs = {k: Path(v).resolve() for k, v in inputs.items() if v is not None}
    seen: dict[Path, str] = {}
    for option, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        target = path.resolve()
        for in_option, source in resolved_inputs.items():
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
