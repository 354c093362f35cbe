"""The configs ship inside the package and are found by name from any directory."""

from __future__ import annotations

from pathlib import Path

from sammoe.assets import CONFIGS, shipped_config
from sammoe.cli.train import shipped_config_names

REPO = Path(__file__).resolve().parents[1]


def test_the_checkout_configs_are_the_shipped_ones():
    assert (REPO / "configs").resolve() == CONFIGS.resolve()
    assert {p.name for p in CONFIGS.glob("*.yaml")} >= {
        "gate.yaml",
        "evaluate.yaml",
        "finetune.yaml",
        "router.yaml",
    }


def test_names_resolve_to_shipped_configs_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shipped_config("gate") == CONFIGS / "gate.yaml"
    assert shipped_config("configs/router.yaml") == CONFIGS / "router.yaml"
    assert shipped_config("spinal_cord") == CONFIGS / "experts" / "spinal_cord.yaml"
    assert shipped_config("nope") is None and shipped_config("../pyproject") is None
    mine = tmp_path / "gate.yaml"
    mine.write_text("trainer: {}\n")
    assert shipped_config("gate.yaml") is None  # a file the user has wins
    argv = ["fit", "--config", "gate.yaml", "--config=experts/textured_lesion", "--trainer.max_epochs=1"]
    assert shipped_config_names(argv) == [
        "fit",
        "--config",
        "gate.yaml",
        f"--config={CONFIGS / 'experts' / 'textured_lesion.yaml'}",
        "--trainer.max_epochs=1",
    ]
