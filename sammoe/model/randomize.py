"""Random weights for parity checks: also randomise what the constructors initialise to constants.

Default initialisation leaves positional embeddings and relative-position tables at zero and norms at
identity, so a comparison against the official code would not exercise them. Used by the parity tests and
the benchmarks on any module tree (ours or the official classes), matched by parameter name and norm type.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_constant_init(module: nn.Module, seed: int) -> nn.Module:
    """pos_embed and rel_pos_* ~ 0.5 N(0, 1); every LayerNorm / LayerNorm3d weight ~ 1 + 0.2 N,
    bias ~ 0.2 N."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "pos_embed" or leaf.startswith("rel_pos"):
            param.copy_(0.5 * torch.randn(param.shape, generator=gen))
    for sub in module.modules():
        if type(sub).__name__ in ("LayerNorm", "LayerNorm3d"):
            sub.weight.copy_(1.0 + 0.2 * torch.randn(sub.weight.shape, generator=gen))
            sub.bias.copy_(0.2 * torch.randn(sub.bias.shape, generator=gen))
    return module
