"""The viewer's interaction logic without napari or Qt: clicks are the source of truth, refinement goes
through add_click on the cached embedding, everything else re-runs predict, and the label map always equals
a fresh Predictor's (and `sammoe segment`'s) for the same clicks."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from sammoe.data.io import Volume, read_image
from sammoe.data.phantoms import LABELS, make_phantom_case
from sammoe.errors import ConfigError, DataError
from sammoe.inference.predictor import Predictor, Target
from sammoe.napari.session import Session


@pytest.fixture(scope="module")
def phantom_volume(tmp_path_factory):
    image, label, affine = make_phantom_case(3, shape=(64, 64, 40), spacing=(2.0, 2.0, 3.0))
    path = tmp_path_factory.mktemp("img") / "phantom.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(path))
    return read_image(path), label


def centre(label: np.ndarray, name: str) -> list[float]:
    return np.argwhere(label == LABELS[name]).mean(0).round().tolist()


def fresh(shipped_tiny_checkpoint, volume, targets):
    """What a new Predictor (no cache, no history) makes of these targets."""
    predictor = Predictor.load(shipped_tiny_checkpoint, experts="none")
    predictor.set_image(volume)
    return predictor.predict(targets).labels


def cli_targets(session: Session) -> list[Target]:
    doc = session.clicks_document()
    return [
        Target(t["points"], t["labels"], t["name"], doc["space"], route=t.get("route"))
        for t in doc["targets"]
    ]


@pytest.fixture
def session(shipped_tiny_checkpoint, phantom_volume):
    s = Session(Predictor.load(shipped_tiny_checkpoint, experts="none"))
    s.set_volume(phantom_volume[0])
    return s


def test_refinement_uses_the_cached_embedding_and_equals_a_fresh_prediction(
    session, shipped_tiny_checkpoint, phantom_volume
):
    volume, label = phantom_volume
    kidney = centre(label, "kidney_left")
    t = session.add_target("kidney")
    assert session.needs_image
    first = session.click(t.id, kidney)
    assert first.path == "predict" and first.encodes == 1 and not session.needs_image
    second = session.click(t.id, np.add(kidney, [2, 1, 0]), positive=True)
    third = session.click(t.id, np.add(kidney, [-6, 0, 0]), positive=False)
    assert second.path == third.path == "refine" and third.encodes == 1  # the encoder ran once
    view = third.targets[0]
    assert view.value == 1 and len(view.clicks) == 3 and view.expert == "foundation"
    assert view.volume_ml > 0 and (view.stability is None or 0 <= view.stability <= 1)
    assert np.array_equal(third.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))


def test_undo_reset_and_delete_touch_one_target_and_equal_a_fresh_prediction(
    session, shipped_tiny_checkpoint, phantom_volume
):
    volume, label = phantom_volume
    a = session.add_target("liver")
    b = session.add_target("spleen")
    session.click(a.id, centre(label, "liver"))
    session.click(b.id, centre(label, "spleen"))
    session.click(b.id, np.add(centre(label, "spleen"), [0, 3, 0]), positive=False)
    assert [v.value for v in session.targets] == [1, 2]
    undone = session.undo(b.id)
    assert undone.path == "undo" and len(undone.targets[1].clicks) == 1
    assert np.array_equal(undone.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))
    deleted = session.delete(a.id)
    assert deleted.path == "remove"
    assert [(v.name, v.value) for v in deleted.targets] == [("spleen", 1)]  # values follow the clicks file
    assert set(np.unique(deleted.labels)) <= {0, 1}
    assert np.array_equal(deleted.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))
    cleared = session.reset(b.id)
    assert cleared.targets[0].value == 0 and not cleared.labels.any()
    with pytest.raises(ConfigError, match="no click to undo"):
        session.undo(b.id)


def test_a_target_starting_with_a_negative_click_waits_for_a_positive_one(session, phantom_volume):
    volume, label = phantom_volume
    t = session.add_target()
    pending = session.click(t.id, centre(label, "liver"), positive=False)
    assert pending.path == "none" and pending.targets[0].value == 0 and pending.labels is None
    assert session.clicks_document()["targets"] == []  # `sammoe segment` refuses a target without a positive
    done = session.click(t.id, centre(label, "kidney_right"))
    assert done.path == "predict" and done.targets[0].value == 1
    doc = session.clicks_document()
    assert doc["targets"][0]["labels"] == [0, 1] and doc["space"] == "voxel"


def test_refused_clicks_are_not_kept(shipped_tiny_checkpoint):
    """Outside the image, and outside the target's crop (add_click's DataError), leave the clicks as they
    were."""
    rng = np.random.default_rng(0)
    array = rng.normal(0, 1, size=(200, 24, 24)).astype(np.float32)  # 200 voxels of 1.5 mm: wider than a crop
    array[10:30, 5:15, 5:15] += 4
    session = Session(Predictor.load(shipped_tiny_checkpoint, experts="none"))
    session.set_volume(Volume(array, np.diag([1.5, 1.5, 1.5, 1.0])))
    t = session.add_target()
    with pytest.raises(DataError, match="outside the image"):
        session.click(t.id, [250, 5, 5])
    session.click(t.id, [20, 10, 10])
    with pytest.raises(DataError, match="outside the target's"):
        session.click(t.id, [190, 10, 10])
    assert len(session.targets[0].clicks) == 1
    assert session.click(t.id, [22, 10, 10]).path == "refine"  # the Predictor is still in step


def test_names_are_unique_and_renames_checked(session):
    a = session.add_target("lesion")
    b = session.add_target("lesion")
    assert b.name == "lesion_2"
    with pytest.raises(ConfigError, match="exists already"):
        session.rename(b.id, "lesion")
    assert session.rename(a.id, " tumour ").name == "tumour"
    with pytest.raises(ConfigError, match="needs a name"):
        session.rename(a.id, "  ")
    with pytest.raises(ConfigError, match="deleted"):
        session.click(999, [1, 1, 1])


def test_another_model_segments_every_target_again(session, shipped_tiny_checkpoint, phantom_volume):
    volume, label = phantom_volume
    t = session.add_target()
    session.click(t.id, centre(label, "liver"))
    again = session.set_predictor(
        Predictor.load(shipped_tiny_checkpoint, experts="none", use_sliding_window=False)
    )
    assert again.path == "predict" and again.targets[0].value == 1 and again.encodes == 1


def test_clicks_document_reproduces_the_label_map_with_sammoe_segment(
    session, shipped_tiny_checkpoint, phantom_volume, tmp_path
):
    from sammoe.cli.segment import main

    volume, label = phantom_volume
    a = session.add_target("kidney")
    b = session.add_target("liver")
    session.click(a.id, centre(label, "kidney_left"))
    session.click(a.id, np.add(centre(label, "kidney_left"), [0, 0, 4]), positive=False)
    last = session.click(b.id, centre(label, "liver"))
    clicks = tmp_path / "clicks.json"
    clicks.write_text(json.dumps(session.clicks_document()))
    out = tmp_path / "seg.nii.gz"
    argv = ["--image", str(volume.path), "--clicks", str(clicks), "--out", str(out)]
    assert main([*argv, "--checkpoint", str(shipped_tiny_checkpoint), "--experts", "none", "--quiet"]) == 0
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj), last.labels)
    results = json.loads(clicks.read_text())["results"]
    assert [r["name"] for r in results] == ["kidney", "liver"] and results[0]["expert"] == "foundation"


def test_the_qt_free_modules_import_neither_napari_nor_qt():
    from helpers.gui import gui_loaded_by

    done = gui_loaded_by(
        "sammoe.napari.session, sammoe.napari.geometry, sammoe.napari.models, sammoe.napari.writer, "
        "sammoe.napari.export, sammoe.napari.threads, sammoe.napari.labelmap"
    )
    assert done.returncode == 0, done.stderr


def test_undo_and_a_new_target_cost_one_target_not_the_history(
    session, shipped_tiny_checkpoint, phantom_volume
):
    """Undo after many refinements decodes nothing; a second target's first click decodes that target alone;
    both leave the label map a fresh Predictor makes of the remaining clicks, voxel for voxel."""
    volume, label = phantom_volume
    liver = centre(label, "liver")
    a = session.add_target("liver")
    session.click(a.id, liver)
    for k in range(6):
        refined = session.click(a.id, np.add(liver, [k % 3 - 1, 2, 0]), positive=bool(k % 2))
    # a refinement recomposes the label map only in the box its target's crop spans, to the same result
    assert refined.box is not None and np.prod([s.stop - s.start for s in refined.box]) < volume.array.size
    assert np.array_equal(refined.labels, session.predictor.segmentation.labels)
    decodes = []
    decoding = session.predictor._decoding
    original = decoding.decode
    decoding.decode = lambda *args, **kw: decodes.append(1) or original(*args, **kw)
    try:
        undone = session.undo(a.id)
        assert undone.path == "undo" and decodes == []
        b = session.add_target("spleen")
        added = session.click(b.id, centre(label, "spleen"))
        assert added.path == "add" and len(decodes) == 1  # one step: the new target's one click
    finally:
        decoding.decode = original
    assert [v.value for v in added.targets] == [1, 2]
    assert np.array_equal(added.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))
    removed = session.reset(a.id)
    assert removed.path == "remove" and [v.value for v in removed.targets] == [0, 1]
    assert np.array_equal(removed.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))


def test_the_session_imports_no_torch():
    """Docking the widget must not import torch on napari's GUI thread (seconds on a laptop): the session and
    the targets it validates clicks with stay torch-free; the model loads in a worker."""
    import subprocess
    import sys

    code = "import sys, sammoe.napari.session; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def count_decodes(predictor, calls: list) -> None:
    decoding = predictor._decoding
    original = decoding.decode
    decoding.decode = lambda *args, **kw: calls.append(1) or original(*args, **kw)


def test_moved_and_deleted_clicks_rerun_that_target_alone(session, shipped_tiny_checkpoint, phantom_volume):
    """napari's point tools move or delete a click: that target is decoded again from the clicks it has now
    (the others are not), keeps its label value, and equals a fresh prediction of the remaining clicks."""
    from sammoe.napari.session import Click

    volume, label = phantom_volume
    liver, spleen = centre(label, "liver"), centre(label, "spleen")
    a, b = session.add_target("liver"), session.add_target("spleen")
    session.click(a.id, liver)
    session.click(a.id, np.add(liver, [0, 4, 0]), positive=False)
    session.click(b.id, spleen)
    decodes: list = []
    count_decodes(session.predictor, decodes)
    moved = [Click(tuple(np.add(liver, [2, 0, 0])), True), session.targets[0].clicks[1]]
    update = session.set_clicks(a.id, moved)
    assert update.path == "rerun" and len(decodes) == 2  # the liver's two clicks, nothing of the spleen's
    assert [(v.name, v.value) for v in update.targets] == [("liver", 1), ("spleen", 2)]
    assert update.targets[0].clicks == tuple(moved)
    assert np.array_equal(update.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))
    deleted = session.set_clicks(a.id, moved[:1])  # the negative click deleted
    assert deleted.path == "rerun" and len(deleted.targets[0].clicks) == 1
    assert np.array_equal(deleted.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))
    assert session.set_clicks(a.id, moved[:1]).path == "none"  # nothing changed
    gone = session.set_clicks(a.id, [])
    assert gone.path == "remove" and [v.value for v in gone.targets] == [0, 1]
    with pytest.raises(DataError, match="outside the image"):
        session.set_clicks(b.id, [Click((500.0, 0.0, 0.0), True)])
    assert len(session.targets[1].clicks) == 1


def test_edited_voxels_lock_their_target_and_survive_other_targets_clicks(
    session, shipped_tiny_checkpoint, phantom_volume
):
    volume, label = phantom_volume
    liver, spleen = centre(label, "liver"), centre(label, "spleen")
    a, b = session.add_target("liver"), session.add_target("spleen")
    first = session.click(a.id, liver)
    model_liver = first.labels == 1
    spleen_voxels = np.argwhere(label == LABELS["spleen"])[:40].T  # painted as liver, inside the spleen
    erased = np.argwhere(model_liver)[:30].T  # erased from the liver
    edit = session.edit(tuple(spleen_voxels), 1)
    assert edit.path == "edit" and edit.targets[0].locked and edit.box is not None
    session.edit(tuple(erased), 0)
    with pytest.raises(ConfigError, match="locked"):
        session.click(a.id, liver)
    second = session.click(b.id, spleen)
    assert second.targets[1].value == 2 and (second.labels == 2).any()
    assert (second.labels[tuple(spleen_voxels)] == 1).all()  # the spleen's mask does not overwrite them
    assert (second.labels[tuple(erased)] == 0).all()
    expected = model_liver.copy()
    expected[tuple(erased)] = False
    expected[tuple(spleen_voxels)] = True
    assert np.array_equal(second.labels == 1, expected)
    assert second.targets[0].voxels == int(expected.sum())
    assert session.clicks_document()["results"][0]["locked"] is True
    unlocked = session.unlock(a.id)
    assert unlocked.path == "unlock" and not unlocked.targets[0].locked
    assert np.array_equal(unlocked.labels, fresh(shipped_tiny_checkpoint, volume, cli_targets(session)))
    assert session.lock(a.id).targets[0].locked  # a lock keeps the model's mask as it is now
    assert np.array_equal(session.click(b.id, np.add(spleen, [1, 0, 0])).labels == 1, unlocked.labels == 1)


@pytest.mark.filterwarnings("ignore:the demo model")
def test_a_chosen_decoder_reruns_that_target_alone_and_is_saved(phantom_volume):
    """A target routed to one decoder by the user: decoded again alone with it (the others keep their
    masks), recorded as its "route" in the clicks document; "routed" gives it back to the model."""
    volume, label = phantom_volume
    s = Session(Predictor.load("demo"))
    s.set_volume(volume)
    assert s.decoders == ("foundation", "spinal_cord", "textured_lesion")
    a, b = s.add_target("kidney"), s.add_target("liver")
    s.click(a.id, centre(label, "kidney_left"))
    before = s.click(b.id, centre(label, "liver"))
    assert "spinal_cord" in before.decoders and before.targets[0].route is None
    routed = s.set_route(a.id, "spinal_cord")
    assert routed.path == "rerun" and routed.targets[0].expert == "spinal_cord"
    assert routed.targets[0].routed_by in ("forced", "chosen") and routed.targets[0].value == 1
    assert np.array_equal(routed.labels == 2, before.labels == 2)  # the liver was not decoded again
    doc = s.clicks_document()
    assert doc["targets"][0]["route"] == "spinal_cord" and "route" not in doc["targets"][1]
    again = Predictor.load("demo")  # what `sammoe segment` makes of the clicks document, route included
    again.set_image(volume)
    assert np.array_equal(again.predict(cli_targets(s)).labels, routed.labels)
    with pytest.raises(ConfigError, match="not loaded"):
        s.set_route(a.id, "no_such_expert")
    back = s.set_route(a.id, None)
    assert back.targets[0].route is None and "route" not in s.clicks_document()["targets"][0]
    assert np.array_equal(back.labels, before.labels)
