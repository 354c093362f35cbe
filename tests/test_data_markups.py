"""3D Slicer markups (.mrk.json) as clicks: one point list per target, LPS/RAS and units converted, negative
points by label, and `sammoe segment --clicks file.mrk.json` equal to the same clicks given in voxels."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from sammoe.data.markups import is_markups, read_markups
from sammoe.errors import DataError

AFFINE = np.array([[0.0, 0.0, -2.0, 40.0], [-0.8, 0.0, 0.0, 15.0], [0.0, 1.2, 0.0, -20.0], [0, 0, 0, 1.0]])


def point(label, position, status="defined", description=""):
    return {"label": label, "description": description, "position": list(position), "positionStatus": status}


def markups(*nodes) -> dict:
    return {
        "@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
        "Resources/Schema/markups-schema-v1.0.3.json#",
        "markups": list(nodes),
    }


def write(path, doc):
    path.write_text(json.dumps(doc))
    return path


def test_point_lists_become_targets_in_ras_mm(tmp_path):
    lps = {
        "type": "Fiducial",
        "name": "tumour",
        "coordinateSystem": "LPS",
        "controlPoints": [
            point("F-1", (10, 20, 30)),
            point("-2", (11, 21, 31)),
            point("neg", (1, 2, 3)),
            point("F-4", (12, 22, 32), description="Negative"),
            point("F-5", (0, 0, 0), status="undefined"),
            point("F-6", (9, 9, 9), status="preview"),
        ],
    }
    ras_um = {
        "type": "Fiducial",
        "coordinateSystem": "RAS",
        "coordinateUnits": ["um", "UCUM", "micrometer"],
        "controlPoints": [point("P", (5000, -6000, 7000))],
    }
    path = write(tmp_path / "points.mrk.json", markups(lps, ras_um))
    assert is_markups(path) and not is_markups(tmp_path / "clicks.json")
    doc = read_markups(path)
    assert doc["space"] == "ras"
    tumour, second = doc["targets"]
    assert tumour["name"] == "tumour" and tumour["labels"] == [1, 0, 0, 0]
    assert tumour["points"][0] == [-10.0, -20.0, 30.0]  # LPS -> RAS negates x and y
    assert second == {"name": "target_2", "points": [[5.0, -6.0, 7.0]], "labels": [1]}


@pytest.mark.parametrize(
    "node,message",
    [
        ({"type": "Line", "controlPoints": [point("L", (0, 0, 0))]}, "not a point list"),
        ({"type": "Fiducial", "controlPoints": []}, "no placed control points"),
        ({"type": "Fiducial", "controlPoints": [point("F", (0, 0, 0), status="undefined")]}, "no placed"),
        (
            {"type": "Fiducial", "coordinateSystem": "IJK", "controlPoints": [point("F", (0, 0, 0))]},
            "LPS or RAS",
        ),
        ({"type": "Fiducial", "coordinateUnits": "cm", "controlPoints": [point("F", (0, 0, 0))]}, "mm or um"),
        ({"type": "Fiducial", "controlPoints": [{"label": "F", "position": [1, 2]}]}, "no \\[x, y, z\\]"),
    ],
)
def test_markups_a_target_cannot_use_are_refused_in_one_line(tmp_path, node, message):
    with pytest.raises(DataError, match=message):
        read_markups(write(tmp_path / "bad.mrk.json", markups(node)))


def test_files_that_are_not_markups_are_refused(tmp_path):
    (tmp_path / "a.mrk.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_markups(tmp_path / "a.mrk.json")
    with pytest.raises(DataError, match="not a Slicer markups file"):
        read_markups(write(tmp_path / "b.mrk.json", {"targets": []}))
    with pytest.raises(DataError, match="not found"):
        read_markups(tmp_path / "missing.mrk.json")


def test_sammoe_segment_reads_markups_like_the_same_clicks_in_voxels(tmp_path, capsys):
    from sammoe.cli import main
    from sammoe.loading import load_backbone, save_backbone

    rng = np.random.default_rng(0)
    array = rng.normal(100.0, 20.0, size=(40, 30, 24)).astype(np.float32)
    array[10:25, 8:20, 5:15] += 150.0
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(array, AFFINE), str(image))
    ckpt = save_backbone(load_backbone(None, "tiny"), tmp_path / "tiny.safetensors")
    voxels = np.array([[17.0, 14.0, 10.0], [12.0, 10.0, 6.0], [30.0, 25.0, 20.0]])
    ras = voxels @ AFFINE[:3, :3].T + AFFINE[:3, 3]
    lps = ras * [-1, -1, 1]
    slicer = markups(
        {
            "type": "Fiducial",
            "name": "lesion",
            "coordinateSystem": "LPS",
            "controlPoints": [point("F-1", lps[0]), point("-F-2", lps[1])],
        },
        {
            "type": "Fiducial",
            "name": "cyst",
            "coordinateSystem": "RAS",
            "controlPoints": [point("C", ras[2])],
        },
    )
    same = {
        "space": "voxel",
        "targets": [
            {"name": "lesion", "points": voxels[:2].tolist(), "labels": [1, 0]},
            {"name": "cyst", "points": voxels[2:].tolist()},
        ],
    }
    outputs = []
    for clicks in (write(tmp_path / "points.mrk.json", slicer), write(tmp_path / "clicks.json", same)):
        out = tmp_path / f"{clicks.name.split('.')[0]}.nii.gz"
        argv = [
            "segment",
            "-i",
            image,
            "--clicks",
            clicks,
            "-o",
            out,
            "--checkpoint",
            ckpt,
            "--experts",
            "none",
        ]
        assert main([*map(str, argv), "--quiet"]) == 0, capsys.readouterr().err
        outputs.append(np.asarray(nib.load(str(out)).dataobj))
    assert outputs[0].max() == 2 and np.array_equal(*outputs)
    broken = write(
        tmp_path / "line.mrk.json", markups({"type": "Line", "controlPoints": [point("L", ras[0])]})
    )
    argv = ["segment", "-i", image, "--clicks", broken, "-o", tmp_path / "x.nii.gz", "--checkpoint", ckpt]
    assert main(list(map(str, argv))) == 2
    assert "not a point list" in capsys.readouterr().err
