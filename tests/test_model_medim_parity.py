"""Parity against medim's SAM-Med3D classes (numerically the official code) at random configurations.

Every constant-initialised parameter (positional embeddings, relative-position tables, norms) is
randomised so that each one influences the outputs, and the hypernetwork heads are scaled so that logits
are O(1).
"""

from __future__ import annotations

import pytest
import torch

from sammoe.loading import load_state
from sammoe.model.randomize import randomize_constant_init
from sammoe.model.sam3d import PRESETS, SamMed3D, SamMed3DConfig

medim_sam = pytest.importorskip("medim.models.sam_med3d")

TOL = {"atol": 1e-4, "rtol": 1e-4}

CONFIGS = {
    # 4^3 tokens in a window of 14: one padded window (the turbo situation, shrunk)
    "grid_smaller_than_window": SamMed3DConfig(
        image_size=64,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        window_size=14,
        prompt_embed_dim=48,
        iou_head_hidden_dim=40,
    ),
    # 6^3 tokens, window 4: padded to 8^3, 2x2x2 windows with partial tails
    "multi_window_with_padding": SamMed3DConfig(
        image_size=96,
        encoder_embed_dim=48,
        encoder_depth=3,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(2,),
        window_size=4,
        prompt_embed_dim=48,
        iou_head_hidden_dim=32,
    ),
    # 5^3 tokens, window 2: padded to 6^3, 3 windows per axis, tail extent 1
    "odd_grid_small_window": SamMed3DConfig(
        image_size=80,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=4,
        encoder_global_attn_indexes=(0,),
        window_size=2,
        prompt_embed_dim=96,
        iou_head_hidden_dim=24,
    ),
    # 8^3 tokens (patch 8), window 4: an exact partition, no padding at all
    "exact_partition": SamMed3DConfig(
        image_size=64,
        patch_size=8,
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(0,),
        window_size=4,
        prompt_embed_dim=48,
        iou_head_hidden_dim=40,
    ),
}


def build_official(config: SamMed3DConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    grid = config.image_size // config.patch_size
    model = medim_sam.SAM_Med3D(
        image_encoder=medim_sam.ImageEncoderViT3D(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_embed_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_num_heads,
            mlp_ratio=config.mlp_ratio,
            out_chans=config.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=lambda dim: torch.nn.LayerNorm(dim, eps=1e-6),
            use_rel_pos=True,
            window_size=config.window_size,
            global_attn_indexes=list(config.encoder_global_attn_indexes),
        ),
        prompt_encoder=medim_sam.PromptEncoder3D(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(grid,) * 3,
            input_image_size=(config.image_size,) * 3,
            mask_in_chans=16,
        ),
        mask_decoder=medim_sam.MaskDecoder3D(
            transformer_dim=config.prompt_embed_dim,
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
    )
    randomize_constant_init(model, seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "output_hypernetworks_mlps" in name and ".layers.2." in name:
                param.mul_(30)  # mask logits O(1), so that thresholds and feedback matter
    return model.eval()


def paired(config: SamMed3DConfig, seed: int = 0):
    official = build_official(config, seed)
    ours = SamMed3D(config).eval()
    load_state(ours, official.state_dict(), "medim")
    return official, ours


def interactive_outputs(model, image, clicks, labels, n_steps=2):
    """Encoder output, then n_steps decoder steps feeding logits back, then one point-free step."""
    outputs = []
    with torch.no_grad():
        embedding = model.image_encoder(image)
        outputs.append(embedding)
        pe = model.prompt_encoder.get_dense_pe()
        low = torch.zeros(image.shape[0], 1, *(4 * s for s in embedding.shape[2:]))
        for step in range(n_steps):
            sparse, dense = model.prompt_encoder(
                points=(clicks[:, : step + 1], labels[:, : step + 1]), boxes=None, masks=low
            )
            low, iou = model.mask_decoder(
                image_embeddings=embedding,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            outputs += [sparse, dense, low, iou]
        sparse, dense = model.prompt_encoder(points=None, boxes=None, masks=low)
        outputs += list(
            model.mask_decoder(
                image_embeddings=embedding,
                image_pe=pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        )
    return outputs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_official_classes(name):
    config = CONFIGS[name]
    official, ours = paired(config, seed=sorted(CONFIGS).index(name))
    gen = torch.Generator().manual_seed(7)
    size = config.image_size
    image = torch.randn(2, 1, size, size, size, generator=gen)
    clicks = torch.randint(0, size, (2, 2, 3), generator=gen).float()
    labels = torch.tensor([[1, 0], [1, 1]])
    for ref, got in zip(
        interactive_outputs(official, image, clicks, labels), interactive_outputs(ours, image, clicks, labels)
    ):
        torch.testing.assert_close(got, ref, **TOL)


def test_bf16_autocast_runs_and_stays_close():
    official, ours = paired(CONFIGS["multi_window_with_padding"])
    image = torch.randn(1, 1, 96, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = official.image_encoder(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = ours.image_encoder(image)
    assert fast.dtype in (torch.bfloat16, torch.float32)
    error = (fast.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.1, f"bf16 relative error {error:.3f}"


def test_gradients_flow_through_fast_attention():
    _, ours = paired(CONFIGS["multi_window_with_padding"])
    image = torch.randn(1, 1, 96, 96, 96)
    ours.image_encoder(image).square().mean().backward()
    block0 = ours.image_encoder.blocks[0].attn
    for param in (block0.qkv.bias, block0.rel_pos_d, block0.rel_pos_w):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.slow  # over 10 s on 2 cores; `make test-all` runs it
def test_full_size_vit_b_ori_matches_official():
    """The released architecture at full size (random weights): ~15 s on 2 cores, kept in the default run."""
    config = PRESETS["vit_b_ori"]
    official, ours = paired(config, seed=11)
    image = torch.randn(1, 1, 128, 128, 128, generator=torch.Generator().manual_seed(5))
    clicks = torch.tensor([[[64.0, 60.0, 70.0], [30.0, 90.0, 100.0]]])
    labels = torch.tensor([[1, 0]])
    ref = interactive_outputs(official, image, clicks, labels, n_steps=2)
    got = interactive_outputs(ours, image, clicks, labels, n_steps=2)
    scale = ref[0].abs().max()
    assert (got[0] - ref[0]).abs().max() <= 1e-4 * max(1.0, scale)
    for r, g in zip(ref[1:], got[1:]):
        torch.testing.assert_close(g, r, **TOL)
