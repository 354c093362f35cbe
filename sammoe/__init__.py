"""sammoe: SAM-Med3D-MoE, 3D promptable medical segmentation that learns new tasks without forgetting.

The public API is re-exported lazily so that `import sammoe` (and plugin discovery, which imports
`sammoe.plugins`) stays cheap and never imports torch.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "SamMed3D": "sammoe.model.sam3d",
    "PRESETS": "sammoe.model.sam3d",
    "SamMoE": "sammoe.model.moe",
    "load_backbone": "sammoe.loading",
    "MaskSelector": "sammoe.model.gate",
    "Predictor": "sammoe.inference.predictor",
    "Target": "sammoe.inference.targets",
    "Preprocessor": "sammoe.data.preprocess",
    "read_image": "sammoe.data.io",
    "write_label": "sammoe.data.io",
    "make_phantom_dataset": "sammoe.data.phantoms",
    "EvalRow": "sammoe.eval.results",
    "write_report": "sammoe.eval.report",
    "discover": "sammoe.plugins.discovery",
    "SammoeError": "sammoe.errors",
    "CheckpointError": "sammoe.errors",
    "DataError": "sammoe.errors",
    "PluginError": "sammoe.errors",
    "ConfigError": "sammoe.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sammoe' has no attribute {name!r}")
    return getattr(import_module(module), name)
