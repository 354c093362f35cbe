"""Expert plugins: manifests (pydantic), discovery through entry points, checksums of plugin files.

`import sammoe.plugins` and discovery stay torch-free; verification and packaging import torch lazily.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SAMMOE_API": "sammoe.plugins.manifest",
    "ENTRY_POINT_GROUP": "sammoe.plugins.manifest",
    "ExpertManifest": "sammoe.plugins.manifest",
    "TaskSpec": "sammoe.plugins.manifest",
    "BackboneSpec": "sammoe.plugins.manifest",
    "WeightsRef": "sammoe.plugins.manifest",
    "Provenance": "sammoe.plugins.manifest",
    "IncompatiblePlugin": "sammoe.plugins.manifest",
    "ExpertRecord": "sammoe.plugins.discovery",
    "PluginWarning": "sammoe.plugins.discovery",
    "discover": "sammoe.plugins.discovery",
    "select_experts": "sammoe.plugins.discovery",
    "get_expert": "sammoe.plugins.discovery",
    "load_expert_weights": "sammoe.plugins.discovery",
    "load_expert_decoders": "sammoe.loading",
    "verify_expert": "sammoe.publish.verify",
    "package_expert": "sammoe.publish.package",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sammoe.plugins' has no attribute {name!r}")
    return getattr(import_module(module), name)
