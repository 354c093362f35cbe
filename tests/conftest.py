"""Shared test fixtures, and the skips of the declared markers (pyproject.toml lists them):

- ``gui``: needs napari, Qt and an X display; skipped with ``helpers.gui.viewer_unavailable()``'s reason.
- ``shared_data``: reads ``../shared/`` (beside the repository: parity fixtures, Colin27) through the
  ``shared_dir`` fixture; skipped when that folder is absent.
- ``gpu``: needs a CUDA device; skipped without one.

A test declares what it needs with the marker; no test file decides for itself whether to skip.
Helpers that are not fixtures live in ``tests/helpers/`` (``from helpers.gui import ...``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(autouse=True, scope="session")
def _empty_weights_cache(tmp_path_factory):
    """No test sees weights a developer fetched: without a model choice, loading must refuse."""
    import os

    old = os.environ.get("SAMMOE_CACHE")
    os.environ["SAMMOE_CACHE"] = str(tmp_path_factory.mktemp("weights-cache"))
    yield
    if old is None:
        os.environ.pop("SAMMOE_CACHE", None)
    else:
        os.environ["SAMMOE_CACHE"] = old


def _viewer_missing() -> str | None:
    from helpers.gui import viewer_unavailable

    return viewer_unavailable()


def _shared_missing() -> str | None:
    if SHARED.is_dir():
        return None
    return f"{SHARED} not present (parity fixtures and real data live there)"


def _cuda_missing() -> str | None:
    import torch

    return None if torch.cuda.is_available() else "needs a CUDA device (torch.cuda.is_available() is false)"


# marker -> what tells why this machine cannot run its tests (None: it can); asked once, and only when a
# selected test carries the marker
NEEDS = {"gui": _viewer_missing, "shared_data": _shared_missing, "gpu": _cuda_missing}
# fixtures that only work for tests carrying the marker
FIXTURE_NEEDS = {
    "shared_dir": "shared_data",
    "make_napari_viewer": "gui",
    "qtbot": "gui",
    "docked_phantom": "gui",
}


@pytest.hookimpl(trylast=True)  # after `-m`/`-k` deselected what will not run
def pytest_collection_modifyitems(config, items):
    """Skip, saying why, each test whose marker names something this machine lacks; refuse a test that uses
    a fixture from FIXTURE_NEEDS without declaring the marker that goes with it."""
    undeclared = [
        f"{item.nodeid} uses {name} but is not marked {marker}"
        for item in items
        for name, marker in FIXTURE_NEEDS.items()
        if name in getattr(item, "fixturenames", ()) and item.get_closest_marker(marker) is None
    ]
    if undeclared:
        raise pytest.UsageError("; ".join(undeclared) + " (see tests/conftest.py)")
    reasons: dict[str, str | None] = {}
    for item in items:
        for marker, missing in NEEDS.items():
            if item.get_closest_marker(marker) is None:
                continue
            if marker not in reasons:
                reasons[marker] = missing()
            if reasons[marker] is not None:
                item.add_marker(pytest.mark.skip(reason=reasons[marker]))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared/`` beside the repository; only for tests marked ``shared_data`` (skipped without it)."""
    return SHARED


# The tiny models. Built once per session and shared by every test that asks for them: a test must not change
# them (train them, load weights into them, swap a decoder); it takes a `copy.deepcopy` to do that.


@pytest.fixture(scope="session")
def seeded_tiny_model():
    """The tiny SamMed3D preset initialised from torch seed 0 (not the shipped weights), in eval mode. Its
    construction leaves the global torch RNG as it found it."""
    import torch

    from sammoe.model.sam3d import SamMed3D

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return SamMed3D.from_preset("tiny").eval()


@pytest.fixture(scope="session")
def shipped_tiny_model():
    """The tiny backbone shipped in sammoe/assets (what `load_backbone(None, "tiny")` loads), in eval mode."""
    from sammoe.loading import load_backbone

    return load_backbone(None, "tiny")


@pytest.fixture(scope="session")
def tiny_model_and_fingerprint(shipped_tiny_model):
    """``(shipped_tiny_model, its backbone fingerprint)``: what expert manifests record as their backbone."""
    from sammoe.model.sam3d import backbone_fingerprint

    return shipped_tiny_model, backbone_fingerprint(shipped_tiny_model)


@pytest.fixture(scope="session")
def shipped_tiny_checkpoint(tmp_path_factory, shipped_tiny_model) -> Path:
    """The shipped tiny backbone saved as a .safetensors file, for commands that take `--checkpoint`."""
    from sammoe.loading import save_backbone

    return save_backbone(shipped_tiny_model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture
def plugin_site_dir(tmp_path, monkeypatch):
    """A fresh site folder on sys.path for fake expert distributions, with no SAMMOE_EXPERTS selection."""
    from sammoe.plugins.testing import plugin_site

    monkeypatch.delenv("SAMMOE_EXPERTS", raising=False)
    with plugin_site(tmp_path / "site") as path:
        yield path


# The napari tests' scan: a phantom NIfTI, opened in a viewer with the widget docked.


@pytest.fixture(scope="session")
def gui_phantom(tmp_path_factory):
    """(path, label, affine) of the phantom NIfTI the napari tests open (``helpers.gui.phantom_nifti``)."""
    from helpers.gui import phantom_nifti

    return phantom_nifti(tmp_path_factory.mktemp("gui-phantom"))


@pytest.fixture
def docked_phantom(make_napari_viewer, qtbot, gui_phantom):
    """(viewer, widget): ``gui_phantom`` opened through sammoe's reader and the widget docked and ready."""
    from helpers.gui import dock

    viewer = make_napari_viewer()
    viewer.open(str(gui_phantom[0]), plugin="sammoe")
    return viewer, dock(viewer, qtbot)
