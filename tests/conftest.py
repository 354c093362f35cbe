"""Shared test fixtures. `../shared/` (beside the repository) holds the parity fixtures and real data."""

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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present (parity fixtures and real data live there)")
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
