"""Checks that the installed plugin is found and works: `pip install . && pytest tests`."""

import json
import os
from pathlib import Path

import pytest

from sammoe.plugins import discover, verify_expert

# the expert's name, read from the packaged manifest.json (never written into this file)
NAME = next(
    json.loads(path.read_text(encoding="utf-8"))["name"]
    for path in Path(__file__).resolve().parents[1].glob("sammoe_expert_*/manifest.json")
)


def test_discovered_ok():
    (record,) = discover([NAME])
    assert record.status == "ok", record.reason


def test_forward_pass_on_its_backbone():
    """Set SAMMOE_BACKBONE to the backbone checkpoint when the expert was not trained on the seeded preset."""
    (record,) = discover([NAME])
    checked = verify_expert(record, backbone_checkpoint=os.environ.get("SAMMOE_BACKBONE"))
    if checked.status == "incompatible" and "SAMMOE_BACKBONE" not in os.environ:
        pytest.skip(checked.reason)
    assert checked.status == "ok", checked.reason
