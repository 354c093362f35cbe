"""Discovery through entry points, with fake distributions on sys.path: every error path is isolated,
reported on one line naming the plugin, and never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from sammoe.errors import PluginError
from sammoe.plugins.discovery import (
    PluginWarning,
    discover,
    get_expert,
    load_expert_weights,
    select_experts,
    selection_from_env,
)
from sammoe.plugins.testing import FAKE_FINGERPRINT, fake_expert


def _one(name, **kwargs):
    (record,) = discover([name], **kwargs)
    return record


def _assert_reason(record, status, *fragments):
    assert record.status == status, record.reason
    assert "\n" not in record.reason
    assert record.reason.startswith(f"expert {record.name!r} (")
    for fragment in fragments:
        assert fragment in record.reason


def test_ok_plugin_is_found_with_its_distribution(plugin_site_dir):
    fake_expert(plugin_site_dir, "liver")
    record = _one("liver")
    assert record.ok and record.reason == ""
    assert (record.distribution, record.dist_version) == ("fake-expert-liver", "1.0.0")
    assert record.entry_point == "fake_expert_liver:manifest"
    assert record.manifest.task.classes == {"liver": 1}
    assert record.weights_path == plugin_site_dir / "fake_expert_liver" / "decoder.safetensors"


BROKEN = {
    "import error": (dict(module_source="raise ImportError('needs scipy')\n"), "ImportError: needs scipy"),
    "missing module": (dict(entry_point="fake_expert_nowhere:manifest"), "ModuleNotFoundError"),
    "not callable": (dict(module_source="manifest = 42\n"), "is not a function (got int)"),
    "manifest raises": (
        dict(module_source="def manifest():\n    raise RuntimeError('boom')\n"),
        "raised RuntimeError: boom",
    ),
    "manifest exits": (dict(module_source="import sys\n\ndef manifest():\n    sys.exit(3)\n"), "SystemExit"),
    "exit at import": (dict(module_source="import sys\nsys.exit(0)\n"), "SystemExit"),
    "interrupt at import": (dict(module_source="raise KeyboardInterrupt\n"), "KeyboardInterrupt"),
    "manifest interrupts": (
        dict(module_source="def manifest():\n    raise KeyboardInterrupt('plugin')\n"),
        "raised KeyboardInterrupt",
    ),
    "wrong type": (dict(module_source="def manifest():\n    return 'liver'\n"), "is of type str, expected"),
    "bad manifest": (dict(task={"classes": {}}), "the manifest is invalid: task.classes"),
    "name mismatch": (dict(name="kidney"), "returns a manifest named 'kidney'"),
    "missing weights": (dict(weights={"path": "gone.safetensors"}), "gone.safetensors does not exist"),
    "sha256 mismatch": (dict(weights={"sha256": "0" * 64}), "the manifest says 000000000000"),
    "relative local path": (
        dict(weights={"package": None, "path": "w.safetensors"}),
        "must be absolute (after ~ and $VAR expansion); put the file there or fix weights.path",
    ),
    "weights package missing": (dict(weights={"package": "fake_expert_absent"}), "is not importable"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_plugin_is_reported_and_isolated(plugin_site_dir, case):
    kwargs, fragment = BROKEN[case]
    fake_expert(plugin_site_dir, "liver", **kwargs)
    fake_expert(plugin_site_dir, "spleen")
    liver, spleen = discover(["liver", "spleen"])
    _assert_reason(liver, "broken", "fake-expert-liver 1.0.0", fragment)
    assert spleen.ok


def test_unexpected_error_is_contained(plugin_site_dir, monkeypatch):
    from sammoe.plugins import checksums as weights

    def unreadable(path, expected):
        raise PermissionError(13, "Permission denied", str(path))

    fake_expert(plugin_site_dir, "liver")
    monkeypatch.setattr(weights, "checksum_problem", unreadable)
    _assert_reason(
        _one("liver"), "broken", "inspecting it failed (PermissionError: [Errno 13] Permission denied"
    )


INCOMPATIBLE = {
    "api": (dict(sammoe_api=99), "targets sammoe_api 99"),
    "kind": (dict(kind="adapter"), "kind 'adapter'"),
    "sammoe version": (dict(requires_sammoe=">=99"), "requires sammoe>=99, installed is"),
}


@pytest.mark.parametrize("case", sorted(INCOMPATIBLE))
def test_incompatible_plugin_is_reported(plugin_site_dir, case):
    kwargs, fragment = INCOMPATIBLE[case]
    fake_expert(plugin_site_dir, "liver", **kwargs)
    _assert_reason(_one("liver"), "incompatible", fragment, "install a plugin version built for sammoe 0.1")


def test_backbone_fingerprint_mismatch_is_incompatible(plugin_site_dir):
    fake_expert(plugin_site_dir, "liver")
    assert _one("liver", backbone_fingerprint=FAKE_FINGERPRINT).ok
    _assert_reason(
        _one("liver", backbone_fingerprint="e" * 64), "incompatible", "trained on backbone tiny ffffff"
    )


def test_duplicate_name_from_two_distributions(plugin_site_dir):
    fake_expert(plugin_site_dir, "liver", dist="liver-a", module="fake_expert_liver_a")
    fake_expert(plugin_site_dir, "liver", dist="liver-b", module="fake_expert_liver_b")
    record = _one("liver")
    assert record.status == "broken"
    assert record.reason == (
        "expert 'liver' is provided by 2 distributions (liver-a 1.0.0, liver-b 1.0.0); "
        "pip uninstall all but one of them"
    )


def test_local_weights_path_with_variables(plugin_site_dir, tmp_path, monkeypatch):
    weights = tmp_path / "store" / "liver.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"payload")
    monkeypatch.setenv("LIVER_STORE", str(weights.parent))
    fake_expert(
        plugin_site_dir,
        "liver",
        payload=b"payload",
        weights={"package": None, "path": "$LIVER_STORE/liver.safetensors"},
    )
    assert _one("liver").weights_path == weights


def test_env_selection(plugin_site_dir, monkeypatch):
    fake_expert(plugin_site_dir, "liver")
    fake_expert(plugin_site_dir, "spleen")
    assert selection_from_env({}) is None
    assert selection_from_env({"SAMMOE_EXPERTS": "none"}) == []
    assert selection_from_env({"SAMMOE_EXPERTS": ""}) == []
    assert selection_from_env({"SAMMOE_EXPERTS": " liver, spleen,liver"}) == ["liver", "spleen"]

    monkeypatch.setenv("SAMMOE_EXPERTS", "spleen")
    assert [r.name for r in discover()] == ["spleen"]
    monkeypatch.setenv("SAMMOE_EXPERTS", "none")
    assert discover() == []
    monkeypatch.setenv("SAMMOE_EXPERTS", "liver,kidney")
    kidney, liver = discover()
    assert liver.ok
    _assert_reason(kidney, "broken", "no installed distribution provides it", "remove it from SAMMOE_EXPERTS")


def test_select_experts_skips_broken_with_a_warning_unless_named(plugin_site_dir):
    fake_expert(plugin_site_dir, "liver", module_source="raise ImportError('x')\n")
    fake_expert(plugin_site_dir, "spleen")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [r.name for r in select_experts()]
    assert "spleen" in names and "liver" not in names
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert any(m.startswith("skipping broken plugin: expert 'liver'") for m in messages)

    assert [r.name for r in select_experts(["spleen"])] == ["spleen"]
    with pytest.raises(PluginError, match="^expert 'liver' .*ImportError: x"):
        select_experts(["spleen", "liver"])


def test_get_expert_unknown_name(plugin_site_dir):
    with pytest.raises(PluginError, match="expert 'kidney' \\(not installed\\): no installed distribution"):
        get_expert("kidney")


def test_load_weights_checks_sha256_on_the_bytes_it_parses(plugin_site_dir):
    import torch
    from safetensors.torch import save

    payload = save({"w": torch.arange(3.0)})
    fake_expert(plugin_site_dir, "liver", payload=payload)
    record = _one("liver")
    assert torch.equal(load_expert_weights(record)["w"], torch.arange(3.0))

    record.weights_path.write_bytes(payload[:-1] + b"!")
    with pytest.raises(PluginError, match="file is corrupt or was replaced, reinstall the plugin"):
        load_expert_weights(record)

    fake_expert(plugin_site_dir, "spleen", module_source="raise ImportError('x')\n")
    with pytest.raises(PluginError, match="expert 'spleen'"):
        load_expert_weights(_one("spleen"))


def test_not_safetensors_is_refused_at_load(plugin_site_dir):
    fake_expert(plugin_site_dir, "liver", payload=b"\x00" * 16)
    with pytest.raises(PluginError, match="is not a readable safetensors file"):
        load_expert_weights(_one("liver"))


def test_discovery_and_list_never_import_torch(plugin_site_dir):
    fake_expert(plugin_site_dir, "liver")
    fake_expert(plugin_site_dir, "spleen", module_source="raise ImportError('x')\n")
    fake_expert(plugin_site_dir, "kidney", sammoe_api=99)
    code = (
        "import sys, json\n"
        "from sammoe.plugins import discover\n"
        "from sammoe.cli.experts import main\n"
        "records = discover()\n"
        "main(['list'])\n"
        "main(['show', 'liver'])\n"
        "print(json.dumps({r.name: r.status for r in records}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site_dir), *sys.path])}
    env.pop("SAMMOE_EXPERTS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    statuses = json.loads(out.stdout.strip().splitlines()[-1])
    assert statuses["liver"] == "ok"
    assert statuses["spleen"] == "broken"
    assert statuses["kidney"] == "incompatible"
