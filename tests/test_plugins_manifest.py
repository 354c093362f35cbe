"""ExpertManifest schema: what validates, what is refused, and how the refusal reads."""

from __future__ import annotations

import json

import pytest

from sammoe.errors import PluginError
from sammoe.plugins.manifest import SAMMOE_API, ExpertManifest, IncompatiblePlugin
from sammoe.plugins.testing import manifest_dict


def _valid(**overrides):
    return manifest_dict("liver", "fake_liver", b"w", **overrides)


def test_valid_manifest_round_trips_through_json():
    manifest = ExpertManifest.parse(_valid())
    assert manifest.kind == "decoder"
    assert manifest.task.target_spacing == (1.5, 1.5, 1.5)
    again = ExpertManifest.parse(json.loads(manifest.model_dump_json()))
    assert again == manifest
    assert ExpertManifest.parse(manifest) is manifest


def test_json_schema_is_published_for_plugin_authors():
    schema = ExpertManifest.model_json_schema()
    assert {"name", "sammoe_api", "task", "backbone", "weights", "provenance"} <= set(schema["required"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"name": "Liver-1"}, "name"),
        ({"version": "one"}, "version"),
        ({"requires_sammoe": "~~0.1"}, "requires_sammoe"),
        ({"task": {"classes": {}}}, "task.classes"),
        ({"task": {"classes": {"a": 0}}}, "task.classes"),
        ({"task": {"classes": {"a": 1, "b": 1}}}, "task.classes"),
        ({"task": {"target_spacing": [1.5, 0, 1.5]}}, "task.target_spacing"),
        ({"task": {"crop_size": [64, 64]}}, "task.crop_size"),
        ({"backbone": {"fingerprint": "abc"}}, "backbone.fingerprint"),
        ({"weights": {"sha256": "XYZ"}}, "weights.sha256"),
        ({"weights": {"path": "decoder.pt"}}, "weights"),
        ({"weights": {"path": "../outside.safetensors"}}, "weights"),
        ({"weights": {"format": "pickle"}}, "weights.format"),
        ({"provenance": {"reported_dice": {"liver": 87.0}}}, "provenance.reported_dice"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_manifest_is_one_line_naming_the_field(override, field):
    with pytest.raises(PluginError) as info:
        ExpertManifest.parse(_valid(**override), source="liver's manifest")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("liver's manifest is invalid: ")
    assert field in message
    assert not isinstance(info.value, IncompatiblePlugin)


def test_other_api_is_incompatible_before_schema_validation():
    data = _valid(sammoe_api=SAMMOE_API + 1, new_field_of_the_future=True)
    with pytest.raises(IncompatiblePlugin, match=f"sammoe_api {SAMMOE_API + 1}"):
        ExpertManifest.parse(data)


def test_unsupported_kind_is_incompatible():
    with pytest.raises(IncompatiblePlugin, match="kind 'adapter'"):
        ExpertManifest.parse(_valid(kind="adapter"))


def test_non_dict_is_refused():
    with pytest.raises(PluginError, match="is of type list"):
        ExpertManifest.parse([1, 2])


def test_incompatibility_checks_the_sammoe_version():
    manifest = ExpertManifest.parse(_valid(requires_sammoe=">=0.2,<0.3"))
    assert manifest.incompatibility("0.2.5") is None
    assert manifest.incompatibility("0.1.0") == "requires sammoe>=0.2,<0.3, installed is 0.1.0"
    assert manifest.incompatibility("0.3.0.dev1") == "requires sammoe>=0.2,<0.3, installed is 0.3.0.dev1"


def test_local_weights_path_is_allowed_outside_a_package():
    manifest = ExpertManifest.parse(_valid(weights={"package": None, "path": "$DATA/x.safetensors"}))
    assert manifest.weights.package is None and manifest.weights.path == "$DATA/x.safetensors"


def test_from_package_reports_missing_and_bad_json(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg_manifest_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(PluginError, match="cannot read pkg_manifest_probe/manifest.json"):
        ExpertManifest.from_package("pkg_manifest_probe")
    (pkg / "manifest.json").write_text("{not json")
    with pytest.raises(PluginError, match="is not valid JSON"):
        ExpertManifest.from_package("pkg_manifest_probe")
    (pkg / "manifest.json").write_text(json.dumps(_valid()))
    assert ExpertManifest.from_package("pkg_manifest_probe").name == "liver"
