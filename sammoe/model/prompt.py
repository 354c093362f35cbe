"""SAM-Med3D prompt encoder: point clicks (sparse tokens) and a low-res mask prompt (dense embedding)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from sammoe.model.common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random Fourier features of coordinates in [0, 1]^3: channels [sin, cos, sin] (the sine block twice)."""

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(3, num_pos_feats))

    def encode(self, unit_coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) coordinates in [0, 1] -> (..., 3 * num_pos_feats)."""
        proj = (2 * unit_coords - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        sin = torch.sin(proj)
        return torch.cat([sin, torch.cos(proj), sin], dim=-1)

    def dense(self, size: Sequence[int]) -> torch.Tensor:
        """Encoding of every cell centre of a grid, (C, D, H, W).

        Quirk 3 of the official code, kept because the weights depend on it: the first coordinate varies
        along grid axis 1 and the second along axis 0 (each normalised by the other axis' size), while
        clicks are encoded in tensor-axis order.
        """
        d, h, w = size
        device = self.positional_encoding_gaussian_matrix.device
        c0 = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / d
        c1 = (torch.arange(d, device=device, dtype=torch.float32) + 0.5) / h
        c2 = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
        grid = torch.stack(
            [
                c0.view(1, h, 1).expand(d, h, w),
                c1.view(d, 1, 1).expand(d, h, w),
                c2.view(1, 1, w).expand(d, h, w),
            ],
            dim=-1,
        )
        return self.encode(grid).permute(3, 0, 1, 2)

    def points(self, coords: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
        """Encoding of clicks given in input-voxel units (already shifted to voxel centres), (B, N, C)."""
        scale = torch.tensor([float(s) for s in image_size], device=coords.device)
        return self.encode(coords.float() / scale)


class PromptEncoder3D(nn.Module):
    """Embeds clicks into sparse tokens and a mask prompt into a dense embedding (official conventions)."""

    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Sequence[int],
        input_image_size: Sequence[int],
        mask_in_chans: int = 16,
    ) -> None:
        super().__init__()
        if embed_dim % 3:
            raise ValueError(
                f"prompt embed_dim must be divisible by 3 (sin/cos/sin features), got {embed_dim}"
            )
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(2)
        )  # negative, positive
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @property
    def mask_input_size(self) -> tuple[int, int, int]:
        """Side of the mask prompt / low-res logits: 4x the image embedding grid."""
        return tuple(4 * s for s in self.image_embedding_size)  # type: ignore[return-value]

    def get_dense_pe(self) -> torch.Tensor:
        """Positional encoding of the image-embedding grid, (1, C, D, H, W)."""
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def _embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # A padding point (0, 0, 0) labelled -1 is appended, as the official encoder does without boxes.
        bsz = coords.shape[0]
        coords = torch.cat([coords.float() + 0.5, coords.new_zeros(bsz, 1, 3, dtype=torch.float32)], dim=1)
        labels = torch.cat([labels, labels.new_full((bsz, 1), -1)], dim=1)
        emb = self.pe_layer.points(coords, self.input_image_size)
        # Embedding vectors per label; labels other than -1/0/1 keep the bare positional encoding.
        not_point = (labels == -1).unsqueeze(-1)
        emb = torch.where(not_point, self.not_a_point_embed.weight.to(emb.dtype), emb)
        emb = emb + (labels == 0).unsqueeze(-1) * self.point_embeddings[0].weight
        emb = emb + (labels == 1).unsqueeze(-1) * self.point_embeddings[1].weight
        return emb

    def forward(
        self,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points=(coords (B, N, 3) voxel indices in tensor-axis order, labels (B, N): 1 pos, 0 neg, -1 none),
        masks=(B, 1, L, L, L) low-res logits or None. Returns sparse (B, N+1, C) and dense (B, C, g, g, g)."""
        if boxes is not None:
            raise ValueError(
                "box prompts are not supported: the released SAM-Med3D weights have only the two point "
                "embeddings; pass clicks as points"
            )
        if points is not None:
            bsz = points[0].shape[0]
        elif masks is not None:
            bsz = masks.shape[0]
        else:
            bsz = 1
        device = self.no_mask_embed.weight.device
        if points is not None:
            sparse = self._embed_points(points[0], points[1])
        else:
            sparse = torch.empty(bsz, 0, self.embed_dim, device=device)
        if masks is not None:
            if tuple(masks.shape[1:]) != (1, *self.mask_input_size):
                raise ValueError(
                    f"mask prompt must be (B, 1, {', '.join(map(str, self.mask_input_size))}), "
                    f"got {tuple(masks.shape)}"
                )
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_embed.weight.view(1, -1, 1, 1, 1).expand(bsz, -1, *self.image_embedding_size)
        return sparse, dense
