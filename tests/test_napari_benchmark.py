"""benchmarks/napari_click.py --quick runs (in this process, on pytest-xvfb's display), so it cannot rot."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "napari_click.py"


def test_napari_click_quick_times_every_step_on_two_volumes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("napari_click", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--json", str(tmp_path / "click.json")])
    assert [case["shape"][2] for case in result["cases"]] == [8, 16]  # two volume sizes, as 60 and 300
    for case in result["cases"]:
        assert case["clicks"] == 3 and case["undo_path"] == "undo" and case["second_target_path"] == "add"
        assert case["click_to_labels_ms"] >= case["session_model_ms"] > 0 and case["add_click_alone_ms"] > 0
        assert case["first_click_s"] > 0 and case["undo_ms"] > 0 and case["second_target_s"] > 0
    out = capsys.readouterr().out
    assert "click -> labels layer (median)" in out and "undo after 4 clicks" in out
    assert "capability" in out.lower() and (tmp_path / "click.json").is_file()
