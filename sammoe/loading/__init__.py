"""The one way from files to models (this package): backbone checkpoints, expert decoders, gates, and every
check on them.

Nothing here executes code from a file: torch checkpoints load with ``weights_only=True`` (plus the official
training checkpoints' ``argparse.Namespace``), everything sammoe writes is safetensors. Each file is read
once; the architecture of a backbone checkpoint is recognised from its tensor shapes, and when none fits, the
preset that fits best names the first difference. Weights must be finite floating-point tensors.

Public API
----------
- ``read_state_dict(path) -> dict``: tensors of a ``.safetensors`` file, an official ``.pth`` (under
  ``model_state_dict``) or a Lightning checkpoint (under ``state_dict``, module prefixes dropped).
- ``detect_preset(state, source) -> str``: the preset whose keys and shapes the state matches exactly.
- ``load_backbone(checkpoint=None, preset="auto") -> SamMed3D`` (eval mode): ``checkpoint`` None = the
  preset's default weights (``tiny``: the shipped foundation model when present, else the seeded
  initialisation), ``"seeded"`` = that seeded initialisation, ``"turbo"`` = the weights ``sammoe weights
  fetch turbo`` cached, ``"demo"`` = the shipped tiny model, else a path.
- ``backbone_source(preset, checkpoint=None)``: where those weights come from, for messages.
- ``load_state(model, state, source, strict=True)``: a checked ``load_state_dict``.
- ``save_backbone(model, path)``, ``save_tensors(state, path, meta=None)``: safetensors via ``sammoe.files``;
  ``load_tensors(path)`` reads what ``save_tensors`` wrote (e.g. the feature cache of router training).
- ``expert_decoder(backbone, record)``, ``load_experts(backbone, names=None)``, ``load_expert_decoders``:
  installed expert plugins assembled for a backbone (see ``load_experts``).
- ``load_decoder_file(backbone, name, path) -> (decoder, classes)``: a decoder exported by finetuning.
- ``save_gate(moe, path)``, ``load_gate(moe, path)``: a SamMoE's gate with its metadata.
- ``load_model(checkpoint=None, preset="auto", experts=None, gate=None, route=None) -> (model, info)``: the
  model ``sammoe segment`` and ``Predictor.load`` run: "turbo" (cached), "demo" (announced by a warning) or
  a path; None = turbo when cached, else one CheckpointError (``sammoe.hub.choose_checkpoint``, torch-free):
  never the demo silently.
"""

from sammoe.loading.checkpoints import (
    DEFAULT_SEED,
    SEEDED,
    TRUNK_PREFIXES,
    backbone_source,
    default_checkpoint,
    detect_preset,
    load_backbone,
    load_state,
    load_tensors,
    preset_of,
    read_state_dict,
    save_backbone,
    save_tensors,
    seeded_backbone,
)
from sammoe.loading.experts import (
    decoder_mismatch,
    expert_decoder,
    load_decoder_file,
    load_expert_decoders,
    load_experts,
)
from sammoe.loading.gate import load_gate, save_gate
from sammoe.loading.model import load_model

__all__ = [
    "DEFAULT_SEED",
    "SEEDED",
    "TRUNK_PREFIXES",
    "backbone_source",
    "decoder_mismatch",
    "default_checkpoint",
    "detect_preset",
    "expert_decoder",
    "load_backbone",
    "load_decoder_file",
    "load_expert_decoders",
    "load_experts",
    "load_gate",
    "load_model",
    "load_state",
    "load_tensors",
    "preset_of",
    "read_state_dict",
    "save_backbone",
    "save_gate",
    "save_tensors",
    "seeded_backbone",
]
