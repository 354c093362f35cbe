"""SamMed3D = image encoder + prompt encoder + mask decoder, with presets.

The state_dict keys and shapes equal those of the official `Sam3D`, so the released
`sam_med3d_turbo.pth` loads strictly (preset `vit_b_ori`) through `sammoe.loading.load_backbone`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sammoe.errors import CheckpointError
from sammoe.model.decoder import MaskDecoder3D
from sammoe.model.encoder import ImageEncoderViT3D
from sammoe.model.prompt import PromptEncoder3D


@dataclass(frozen=True)
class SamMed3DConfig:
    """Constructor arguments, named like the official builder (`build_sam3D_vit_b_ori`)."""

    image_size: int = 128
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    mlp_ratio: float = 4.0
    prompt_embed_dim: int = 384
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def embedding_size(self) -> int:
        return self.image_size // self.patch_size


PRESETS: dict[str, SamMed3DConfig] = {
    # The released sam_med3d_turbo.pth architecture.
    "vit_b_ori": SamMed3DConfig(),
    # Same family at 64^3 with a 4^3 token grid (the official tiny parity fixture); tests and the demo.
    "tiny": SamMed3DConfig(
        image_size=64,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        prompt_embed_dim=48,
        iou_head_hidden_dim=40,
    ),
}


class SamMed3D(nn.Module):
    """The SAM-Med3D backbone. Inputs are z-normalised (B, 1, S, S, S) volumes; clicks are voxel indices."""

    def __init__(self, config: SamMed3DConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        config = replace(config or PRESETS["vit_b_ori"], **overrides)
        self.config = config
        grid = config.embedding_size
        self.image_encoder = ImageEncoderViT3D(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            window_size=config.window_size,
            global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        )
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid, grid, grid),
            input_image_size=(config.image_size,) * 3,
            mask_in_chans=config.mask_in_chans,
        )
        self.mask_decoder = MaskDecoder3D(
            transformer_dim=config.prompt_embed_dim,
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
            transformer_depth=config.decoder_depth,
            transformer_num_heads=config.decoder_num_heads,
            transformer_mlp_dim=config.decoder_mlp_dim,
        )

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_preset(cls, name: str) -> SamMed3D:
        """Build a preset (`vit_b_ori` = turbo, `tiny`) with fresh weights; `sammoe.loading.load_backbone`
        builds one from a checkpoint."""
        if name not in PRESETS:
            raise CheckpointError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
        return cls(PRESETS[name])

    @classmethod
    def from_official_config(cls, cfg: dict[str, Any]) -> SamMed3D:
        """Build from the official constructor arguments: {'image_encoder': {...}, 'prompt_encoder': {...},
        'mask_decoder': {...}} (the layout of the tiny fixture's `tiny_config.json`)."""
        enc, prm, dec = cfg["image_encoder"], cfg["prompt_encoder"], cfg["mask_decoder"]
        if not enc.get("use_rel_pos", True) or not enc.get("use_abs_pos", True):
            raise CheckpointError(
                "only use_rel_pos=True, use_abs_pos=True encoders exist in SAM-Med3D releases"
            )
        hard = cfg.get("mask_decoder_hardcoded", {})
        config = SamMed3DConfig(
            image_size=int(enc["img_size"]),
            patch_size=int(enc["patch_size"]),
            encoder_embed_dim=int(enc["embed_dim"]),
            encoder_depth=int(enc["depth"]),
            encoder_num_heads=int(enc["num_heads"]),
            encoder_global_attn_indexes=tuple(int(i) for i in enc["global_attn_indexes"]),
            window_size=int(enc["window_size"]),
            mlp_ratio=float(enc.get("mlp_ratio", 4.0)),
            prompt_embed_dim=int(prm["embed_dim"]),
            mask_in_chans=int(prm.get("mask_in_chans", 16)),
            num_multimask_outputs=int(dec.get("num_multimask_outputs", 3)),
            iou_head_depth=int(dec.get("iou_head_depth", 3)),
            iou_head_hidden_dim=int(dec.get("iou_head_hidden_dim", 256)),
            decoder_depth=int(hard.get("depth", 2)),
            decoder_num_heads=int(hard.get("num_heads", 8)),
            decoder_mlp_dim=int(hard.get("mlp_dim", 2048)),
        )
        if int(enc["out_chans"]) != config.prompt_embed_dim:
            raise CheckpointError(
                f"image_encoder.out_chans ({enc['out_chans']}) must equal prompt_encoder.embed_dim "
                f"({config.prompt_embed_dim})"
            )
        return cls(config)

    # ----------------------------------------------------------------------------------------- inference
    @property
    def img_size(self) -> int:
        return self.config.image_size

    @property
    def low_res_size(self) -> int:
        return self.prompt_encoder.mask_input_size[0]

    def decode(
        self,
        image_embeddings: torch.Tensor,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_prompt: torch.Tensor | None = None,
        decoder: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder on precomputed embeddings; `decoder` swaps in an expert decoder."""
        prompt = None if points is None else (points, labels)
        sparse, dense = self.prompt_encoder(points=prompt, boxes=None, masks=mask_prompt)
        return (decoder or self.mask_decoder)(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    def predict_logits(
        self,
        image: torch.Tensor,
        points: torch.Tensor,
        labels: torch.Tensor,
        mask_prompt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One interactive step: (B,1,S,S,S) image + clicks (B,N,3)/(B,N) -> low-res logits (B,1,L,L,L), IoU.

        Without `mask_prompt` an all-zero mask is fed, as the official inference loop does on its first step.
        """
        if mask_prompt is None:
            mask_prompt = image.new_zeros(image.shape[0], 1, *self.prompt_encoder.mask_input_size)
        return self.decode(self.image_encoder(image), points, labels, mask_prompt)

    @staticmethod
    def upsample(low_res_logits: torch.Tensor, size: int) -> torch.Tensor:
        """Official upsampling of low-res logits to the input cube (trilinear, align_corners=False)."""
        return F.interpolate(low_res_logits, size=(size,) * 3, mode="trilinear", align_corners=False)


def backbone_fingerprint(model: SamMed3D) -> str:
    """sha256 over the frozen trunk (image encoder + prompt encoder) weights: identifies the backbone that
    experts were finetuned on. Keys sorted; tensors hashed as contiguous float32 bytes with their shape."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(k for k in state if k.startswith(("image_encoder.", "prompt_encoder."))):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
