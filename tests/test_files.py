"""The one writer (`sammoe.files`): atomic, no link followed, normal permissions, and outputs checked against
every input before any work, through the API and through `sammoe segment`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from sammoe import files
from sammoe.cli import main
from sammoe.errors import DataError
from sammoe.files import check_outputs, write_file, write_text


def test_write_is_atomic_and_leaves_nothing_on_failure(tmp_path):
    target = write_text(tmp_path / "a.json", "old")

    def broken(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_file(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_link_at_the_output_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "someone_elses.txt"
    victim.write_text("precious")
    link = tmp_path / "report.json"
    link.symlink_to(victim)
    write_text(link, "{}")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "{}"


def test_outputs_get_the_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize(
    "outputs, message",
    [
        ({"--report": "series/slice_001.dcm"}, "inside the input --image"),
        ({"--report": "clicks.json"}, "would replace the input --clicks"),
        ({"--report": "gate.safetensors"}, "would replace the input --gate"),
        ({"--out": "seg.nii.gz", "--probabilities": "seg.nii.gz"}, "also given as --out"),
        ({"--report": "afile/report.json"}, "is a file, not a folder"),
    ],
)
def test_check_outputs_refuses(tmp_path, outputs, message):
    (tmp_path / "series").mkdir()
    for name in ("series/slice_001.dcm", "clicks.json", "gate.safetensors", "afile"):
        (tmp_path / name).write_text("x")
    inputs = {
        "--image": tmp_path / "series",
        "--clicks": tmp_path / "clicks.json",
        "--gate": tmp_path / "gate.safetensors",
    }
    with pytest.raises(DataError, match=message) as err:
        check_outputs({k: tmp_path / v for k, v in outputs.items()}, inputs, overwrite=True)
    assert "\n" not in str(err.value)


def _refusal_as(uid: int, out: Path) -> str | None:
    """check_outputs({"--out": out}) in a forked child running as ``uid``: its one-line refusal, or None."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, check, report through the pipe, never return into pytest
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            check_outputs({"--out": out}, {})
            code = 0
        except DataError as err:
            os.write(write, str(err).encode())
            code = 3
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) in (0, 3), status
    return message or None


def test_read_only_folder_is_refused_up_front(tmp_path):
    """A folder without write permission, for a user other than root (root may write there; as root the check
    runs in a forked child as `nobody`, in a folder outside root's private pytest tree)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o555)
        try:
            with pytest.raises(DataError) as err:
                check_outputs({"--out": folder / "seg.nii.gz"}, {})
            message = str(err.value)
        finally:
            folder.chmod(0o755)
    else:
        base = Path(tempfile.mkdtemp())
        try:
            base.chmod(0o755)
            folder = base / "ro"
            folder.mkdir(mode=0o555)
            message = _refusal_as(65534, folder / "seg.nii.gz")
            assert list(folder.iterdir()) == []
        finally:
            shutil.rmtree(base)
    assert (
        message
        == f"--out {folder}/seg.nii.gz: cannot write in {folder} (permission denied); choose another folder"
    )


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc")
@pytest.mark.parametrize("out", ["/proc/seg.nii.gz", "/proc/self/x/seg.nii.gz"])
def test_a_folder_that_refuses_new_files_is_refused_up_front_even_for_root(out):
    """/proc accepts no new file, root or not, and os.access says root may write there: the check creates a
    file for real."""
    with pytest.raises(DataError, match=r"cannot write in /proc\S*") as err:
        check_outputs({"--out": out}, {})
    assert str(err.value).startswith(f"--out {out}: ") and str(err.value).endswith("; choose another folder")
    assert "\n" not in str(err.value)


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("existing", [True, False], ids=["over-a-file", "new-file"])
@pytest.mark.parametrize("where", ["fsync-bytes", "fsync-writer", "inside-writer"])
def test_a_full_disk_is_one_line_and_leaves_the_folder_as_it_was(tmp_path, monkeypatch, where, existing):
    """ENOSPC while the bytes go to disk (the temp file's fsync, or the writer itself, as nib.save would meet
    it): one line naming the file and the fix, no temp file left, an existing file at the target unchanged."""
    target = tmp_path / "seg.nii.gz"
    if existing:
        target.write_bytes(b"old label map\x00\xff")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    if where == "inside-writer":

        def content(path):
            path.write_bytes(b"half a file")
            _no_space()

    else:
        monkeypatch.setattr(files.os, "fsync", _no_space)
        content = b"new" if where == "fsync-bytes" else (lambda path: path.write_bytes(b"new"))
    with pytest.raises(DataError) as err:
        write_file(target, content, suffix=".nii.gz")
    kept = " (the existing file is unchanged)" if existing else ""
    assert str(err.value) == (
        f"cannot write {target}: no space left on the device{kept}; free some space or choose another folder"
    )
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_segment_never_replaces_an_input_and_writes_nothing_when_refused(tmp_path, capsys):
    """The reported data loss: with --overwrite, --report onto a slice inside the DICOM input folder and onto
    the clicks file. Refused in one line before anything is read; every input byte-identical, no output."""
    series = tmp_path / "series"
    series.mkdir()
    slice_ = series / "slice_001.dcm"
    slice_.write_bytes(b"DICM" * 64)
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps({"targets": [{"points": [[10, 10, 10]]}]}))
    before = {p: p.read_bytes() for p in (slice_, clicks)}
    for report, message in (
        (slice_, "inside the input --image"),
        (clicks, "would replace the input --clicks"),
    ):
        rc = main(
            [
                "segment",
                "--image",
                str(series),
                "--clicks",
                str(clicks),
                "--out",
                str(tmp_path / "seg.nii.gz"),
                "--report",
                str(report),
                "--overwrite",
                "--quiet",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "seg.nii.gz").exists()
    assert {p: p.read_bytes() for p in before} == before
