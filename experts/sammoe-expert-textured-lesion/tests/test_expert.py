"""Checks that the installed plugin is found and works: `pip install . && pytest tests`."""

import os

import pytest

from sammoe.plugins import discover, verify_expert


def test_discovered_ok():
    (record,) = discover(["textured_lesion"])
    assert record.status == "ok", record.reason


def test_forward_pass_on_its_backbone():
    """Set SAMMOE_BACKBONE to the backbone checkpoint when the expert was not trained on the seeded preset."""
    (record,) = discover(["textured_lesion"])
    checked = verify_expert(record, backbone_checkpoint=os.environ.get("SAMMOE_BACKBONE"))
    if checked.status == "incompatible" and "SAMMOE_BACKBONE" not in os.environ:
        pytest.skip(checked.reason)
    assert checked.status == "ok", checked.reason
