"""The one writer (`sammoe.files`): atomic, no link followed, normal permissions, and outputs checked against
every input before any work, through the API and through `sammoe segment`."""

from __future__ import annotations

import json
import os
import stat

import pytest

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
    inputs = {"--image": tmp_path / "series", "--clicks": tmp_path / "clicks.json",
              "--gate": tmp_path / "gate.safetensors"}  # fmt: skip
    with pytest.raises(DataError, match=message) as err:
        check_outputs({k: tmp_path / v for k, v in outputs.items()}, inputs, overwrite=True)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_up_front(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(DataError, match="permission denied"):
            check_outputs({"--out": folder / "seg.nii.gz"}, {})
    finally:
        folder.chmod(0o755)


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
        rc = main(["segment", "--image", str(series), "--clicks", str(clicks), "--out", str(tmp_path / "seg.nii.gz"),
                   "--report", str(report), "--overwrite", "--quiet"])  # fmt: skip
        err = capsys.readouterr().err
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "seg.nii.gz").exists()
    assert {p: p.read_bytes() for p in before} == before
