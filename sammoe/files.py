"""The one way sammoe writes a file, and the check that no output can replace an input.

Every output goes through ``write_file``: the content is written to a temp file with a random name created
exclusively in the target folder (``tempfile.mkstemp``: ``O_CREAT | O_EXCL``, so a planted link is never
followed), flushed to disk, given the permissions of a normal new file (0666 less the umask, not mkstemp's
0600, so colleagues can read a shared run) and renamed over the target in one step. A reader sees the old
file or the new one, never half of one, and a failure leaves nothing behind.

``check_outputs`` runs before any long work: every output is compared with every input (a file, or any file
inside an input folder such as a DICOM series) and with the other outputs, existing outputs need
``overwrite``, and each target folder must be a writable folder. A refusal leaves nothing on disk.
"""

from __future__ import annotations

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


def write_file(path: str | os.PathLike[str], content: bytes | Writer, *, suffix: str = "") -> Path:
    """Write ``content`` (bytes, or a function that writes a given path) to ``path`` atomically.

    ``suffix`` is the temp file's ending, for writers that choose the format by name (``.nii.gz``).
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=folder)
    tmp = Path(name)
    try:
        if isinstance(content, (bytes, bytearray, memoryview)):
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
                handle.flush()
                os.fsync(handle.fileno())
        else:
            os.close(fd)
            content(tmp)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    not a writable folder. Keys are the option names used in messages (``--out``)."""
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
                    f"{option} {path}: would replace {'the input' if target == source else 'a file inside the input'} "
                    f"{in_option} {source}; choose an output path outside the inputs"
                )
        if target in seen:
            raise DataError(f"{option} {path}: also given as {seen[target]}; give each output its own path")
        seen[target] = option
        if target.is_dir():
            raise DataError(f"{option} {path}: is a folder; give a file path")
        if target.exists() and not overwrite:
            raise DataError(
                f"{option} {path}: already exists; choose another path or pass --overwrite (overwrite=True in Python)"
            )
        folder = target.parent
        while not folder.exists():
            folder = folder.parent
        if not folder.is_dir():
            raise DataError(f"{option} {path}: {folder} is a file, not a folder; choose another output path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise DataError(
                f"{option} {path}: cannot write in {folder} (permission denied); choose another folder"
            )
