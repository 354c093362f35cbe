"""Finding a cohort's cases: scans of every format, their prompts files, outputs, manifests and datasets."""

from __future__ import annotations

import json

import pytest

from sammoe.data.cohort import find_cases
from sammoe.errors import ConfigError


def _touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _dicom_folder(path):
    path.mkdir(parents=True)
    (path / "001.dcm").write_bytes(b"\0" * 128 + b"DICM")
    return path


def test_a_folder_of_every_format_with_prompts_in_their_folder(tmp_path):
    images = tmp_path / "images"
    for name in ("a.nii.gz", "b.nrrd", "c.mha", "d.mhd", "e.mgz", "f_0000.nii.gz"):
        _touch(images / name)
    _touch(images / "d.raw")  # the .mhd's data file: not a case
    _touch(images / "f_0001.nii.gz")  # another channel of case f
    _touch(images / "old.seg.nrrd")  # a segmentation: not a scan
    _touch(images / "notes.txt")
    _dicom_folder(images / "g")
    (images / "empty").mkdir()
    prompts = tmp_path / "prompts"
    for case in "abcdefg":
        _touch(prompts / f"{case}.json")
    cases = find_cases(images, out=tmp_path / "out", prompts=prompts)
    assert [c.case_id for c in cases] == list("abcdefg")
    assert all(c.problem is None and c.prompts == prompts / f"{c.case_id}.json" for c in cases)
    assert cases[5].image.name == "f_0000.nii.gz" and cases[6].image == images / "g"
    assert cases[0].labels == tmp_path / "out" / "a.nii.gz"
    assert cases[0].report == tmp_path / "out" / "a.report.json"


def test_prompts_beside_the_scan_and_a_case_without_any(tmp_path):
    images = tmp_path / "images"
    _touch(images / "a.nii.gz")
    _touch(images / "a.clicks.json")
    _touch(images / "b.nrrd")
    _touch(images / "b.mrk.json")
    _touch(images / "c.nii")
    cases = find_cases(images, out=tmp_path / "out", suffix=".seg.nrrd")
    assert [c.prompts.name if c.prompts else None for c in cases] == ["a.clicks.json", "b.mrk.json", None]
    assert "no prompts file" in cases[2].problem and "c.clicks.json" in cases[2].problem
    assert cases[1].labels.name == "b.seg.nrrd" and cases[1].report.name == "b.report.json"


def test_two_prompt_files_for_one_case_is_that_case_s_problem(tmp_path):
    _touch(tmp_path / "images" / "a.nii.gz")
    _touch(tmp_path / "prompts" / "a.json")
    _touch(tmp_path / "prompts" / "a.mrk.json")
    (case,) = find_cases(tmp_path / "images", out=tmp_path / "out", prompts=tmp_path / "prompts")
    assert case.prompts is None and "two prompt files" in case.problem


@pytest.mark.parametrize(
    "setup, message",
    [
        (
            lambda t: (_touch(t / "images" / "a.nii.gz"), _touch(t / "images" / "a.nrrd")),
            "two scans are case 'a'",
        ),
        (lambda t: (t / "images").mkdir(), "no scans found"),
        (lambda t: None, "not a folder"),
    ],
)
def test_cohorts_that_cannot_run_are_refused_in_one_line(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(ConfigError, match=message):
        find_cases(tmp_path / "images", out=tmp_path / "out")


def test_outputs_inside_the_images_folder_are_refused(tmp_path):
    _touch(tmp_path / "images" / "a.nii.gz")
    with pytest.raises(ConfigError, match="inside the images folder"):
        find_cases(tmp_path / "images", out=tmp_path / "images" / "seg")


def test_a_bad_output_suffix_and_both_or_neither_source_are_refused(tmp_path):
    _touch(tmp_path / "images" / "a.nii.gz")
    with pytest.raises(ConfigError, match="output suffix"):
        find_cases(tmp_path / "images", out=tmp_path / "out", suffix=".png")
    with pytest.raises(ConfigError, match="either images"):
        find_cases(None, out=tmp_path / "out")
    with pytest.raises(ConfigError, match="either images"):
        find_cases(tmp_path / "images", out=tmp_path / "out", manifest=tmp_path / "m.csv")


def test_a_manifest_with_relative_paths_and_its_own_outputs(tmp_path):
    _touch(tmp_path / "scans" / "x.nii.gz")
    _touch(tmp_path / "scans" / "y.nii.gz")
    _touch(tmp_path / "clicks" / "x.json")
    manifest = _touch(
        tmp_path / "cases.csv",
        "image,prompts,output,case\nscans/x.nii.gz,clicks/x.json,,\nscans/y.nii.gz,clicks/y.json,seg/y.seg.nrrd,why\n",
    )
    y, x = find_cases(manifest=manifest, out=tmp_path / "out")  # sorted by case id: "why" < "x"
    assert (x.case_id, x.image, x.prompts, x.problem) == (
        "x",
        tmp_path / "scans/x.nii.gz",
        tmp_path / "clicks/x.json",
        None,
    )
    assert x.labels == tmp_path / "out" / "x.nii.gz"
    assert y.case_id == "why" and "not found" in y.problem
    assert y.labels == tmp_path / "seg" / "y.seg.nrrd" and y.report == tmp_path / "seg" / "y.report.json"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no rows"),
        ("image,clicks\na,b\n", "columns are image, prompts"),
        ("image,prompts\n,b\n", "line 2 has no image"),
    ],
)
def test_bad_manifests_are_refused_naming_the_file(tmp_path, text, message):
    manifest = _touch(tmp_path / "cases.csv", text)
    with pytest.raises(ConfigError, match=message):
        find_cases(manifest=manifest, out=tmp_path / "out")


def test_an_nnunet_dataset_root_gives_its_test_images_and_labels(tmp_path):
    root = tmp_path / "Dataset001"
    _touch(root / "dataset.json", json.dumps({"labels": {"background": 0}}))
    _touch(root / "imagesTs" / "p1_0000.nii.gz")
    _touch(root / "labelsTs" / "p1.nii.gz")
    _touch(root / "imagesTr" / "t1_0000.nii.gz")
    _touch(tmp_path / "prompts" / "p1.json")
    (case,) = find_cases(root, out=tmp_path / "out", prompts=tmp_path / "prompts")
    assert case.case_id == "p1" and case.reference == root / "labelsTs" / "p1.nii.gz"
    assert case.problem is None
