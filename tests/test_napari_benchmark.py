"""benchmarks/napari_click.py --smoke runs (in this process, on pytest-xvfb's display), so it cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "napari_click.py"


def test_napari_click_smoke_times_refinement_clicks(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("napari_click", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--smoke", "--json", str(tmp_path / "click.json")])
    assert result["clicks"] == 3 and result["encodes"] == 1  # every refinement on the cached embedding
    assert result["click_to_labels_ms"] >= result["session_model_ms"] > 0 and result["add_click_alone_ms"] > 0
    assert "click -> labels layer (median)" in capsys.readouterr().out and (tmp_path / "click.json").is_file()
