"""SAM-Med3D 3D ViT image encoder, exact to the official weights and fast.

Two behaviours of the official encoder are baked into its trained weights and are reproduced here
(DESIGN.md, quirks 1 and 2):

1. Windowed blocks zero-pad the normed token grid up to a multiple of the window size and attend over the
   padded tokens without a key mask. A padded token is zero after `norm1`, so its key is the qkv key bias
   and its value the qkv value bias.
2. The decomposed relative-position bias inherits 2D indexing. For a query at (qd, qh, qw) and a key at
   (KD, KH, KW) on a window grid of side G, with Q the query vectors on that grid:
   ``bias = Q[qd,qh,qw]·Rd[qd,KW] + Q[qd,qh,KD]·Rh[qh,KW] + Q[qd,qh,KH]·Rw[KH,KW]``.

Instead of materialising the padded tokens (8^3 real tokens padded to 14^3 in the turbo model), every
window attends over its real keys plus ONE extra key (k = key bias, v = value bias) whose additive bias is
the log of the summed exp-bias over all padded keys. That sum factorises per axis because the bias is a sum
of terms that each depend on few key indices, so it is computed exactly from small per-axis log-sum-exps.
Windows are grouped by their real extent, so general partitions (several windows, partial tail windows)
stay exact without padding either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sammoe.model.common import LayerNorm3d, MLPBlock


def _relative_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """R[i, j] = table[i - j + size - 1] for i, j in [0, size): shape (size, size, head_dim)."""
    if table.shape[0] != 2 * size - 1:
        raise ValueError(
            f"relative-position table has {table.shape[0]} rows, expected {2 * size - 1} for a grid of side "
            f"{size}; the input volume size must match the encoder's img_size"
        )
    pos = torch.arange(size, device=table.device)
    return table[pos[:, None] - pos[None, :] + size - 1]


def _attention_mask(shape: tuple[int, int, int, int], like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised (n, heads, queries, keys) mask on `like`'s device whose rows start on 16-byte
    boundaries: fused attention kernels copy a mask whose row stride is not aligned."""
    *lead, keys = shape
    per_16_bytes = max(1, 16 // torch.empty(0, dtype=dtype).element_size())
    stride = -(-keys // per_16_bytes) * per_16_bytes
    return like.new_empty(*lead, stride, dtype=dtype)[..., :keys]


class Attention3D(nn.Module):
    """Multi-head attention over one window grid with the official decomposed relative positions.

    `forward` takes the real tokens of windows whose real part is the box [0,a)x[0,b)x[0,c) of a window of
    side `grid`; the rest of each window is the official zero padding, handled analytically.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, rel_pos_size: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = rel_pos_size is not None
        if rel_pos_size is not None:
            rows = 2 * rel_pos_size - 1
            self.rel_pos_d = nn.Parameter(torch.zeros(rows, self.head_dim))
            self.rel_pos_h = nn.Parameter(torch.zeros(rows, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(rows, self.head_dim))

    def _padded_qkv(self) -> torch.Tensor:
        """q, k, v of a padded (all-zero) token: the qkv bias, shape (3, heads, head_dim)."""
        if self.qkv.bias is None:
            return self.qkv.weight.new_zeros(3, self.num_heads, self.head_dim)
        return self.qkv.bias.view(3, self.num_heads, self.head_dim)

    def _bias(self, q: torch.Tensor, grid: int, q_pad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The attention mask in `dtype`: relative-position bias over the real keys, then (when the window is
        padded) one column with the log-sum bias of all padded keys.

        q: (N, heads, a, b, c, head_dim) float32. Returns (N, heads, abc, abc [+ 1]).
        """
        n, h, a, b, c, hd = q.shape
        r_d = _relative_table(self.rel_pos_d.float(), grid)
        r_h = _relative_table(self.rel_pos_h.float(), grid)
        r_w = _relative_table(self.rel_pos_w.float(), grid)
        # Q on the full window row along the last axis: positions >= c are padding (query = q bias).
        q_row = q
        if c < grid:
            fill = q_pad.float().view(1, h, 1, 1, 1, hd).expand(n, h, a, b, grid - c, hd)
            q_row = torch.cat([q, fill], dim=4)
        term_d = torch.einsum("nhdbwc,dkc->nhdbwk", q, r_d[:a])  # [.., qw, KW]
        term_h = torch.einsum("nhdbxc,bkc->nhdbxk", q_row, r_h[:b])  # [.., KD, KW]
        term_w = torch.einsum("nhdbxc,xkc->nhdbxk", q_row, r_w)  # [.., KH, KW]
        padded = (a, b, c) != (grid, grid, grid)
        keys = a * b * c
        mask = _attention_mask((n, h, keys, keys + padded), q, dtype)
        real = mask[..., :keys].view(n, h, a, b, c, a, b, c)
        partial = term_d[:, :, :, :, :, None, None, :c] + term_h[:, :, :, :, None, :a, None, :c]
        if torch.is_grad_enabled() and (q.requires_grad or self.rel_pos_d.requires_grad):
            real.copy_(partial + term_w[:, :, :, :, None, None, :b, :c])  # out= has no gradient
        else:  # summed in float32 and rounded once, straight into the mask: no float32 copy of it
            torch.add(partial, term_w[:, :, :, :, None, None, :b, :c], out=real)
        if not padded:
            return mask
        # Padded keys = {KD >= a} U {KD < a, KH >= b} U {KD < a, KH < b, KW >= c}: disjoint product sets, each
        # summed as sum_KW exp(term_d[KW]) * sum_KD exp(term_h) * sum_KH exp(term_w), in log space. Empty sets
        # are left out rather than set to -inf, which would give NaN gradients.
        h_lo = torch.logsumexp(term_h[..., :a, :], -2)
        parts = []
        if a < grid:
            h_hi = torch.logsumexp(term_h[..., a:, :], -2)
            parts.append(torch.logsumexp(term_d + (h_hi + torch.logsumexp(term_w, -2))[..., None, :], -1))
        if b < grid:
            w_hi = torch.logsumexp(term_w[..., b:, :], -2)
            parts.append(torch.logsumexp(term_d + (h_lo + w_hi)[..., None, :], -1))
        if c < grid:
            w_lo = torch.logsumexp(term_w[..., :b, :], -2)
            parts.append(torch.logsumexp(term_d[..., c:] + (h_lo + w_lo)[..., None, c:], -1))
        mask[..., keys] = torch.logsumexp(torch.stack(parts), dim=0).reshape(n, h, keys)
        return mask

    def forward(self, x: torch.Tensor, grid: int) -> torch.Tensor:
        n, a, b, c, dim = x.shape
        h, hd = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(n, a * b * c, 3, h, hd).permute(2, 0, 3, 1, 4).unbind(0)
        q_pad, k_pad, v_pad = self._padded_qkv()
        padded = (a, b, c) != (grid, grid, grid)
        mask = None
        if self.use_rel_pos:
            # The bias is computed in float32 even under autocast: log-sum-exps need the range.
            with torch.autocast(device_type=x.device.type, enabled=False):
                mask = self._bias(q.float().reshape(n, h, a, b, c, hd), grid, q_pad, q.dtype)
        elif padded:
            keys = a * b * c
            mask = _attention_mask((n, h, keys, keys + 1), q, q.dtype)
            mask[..., :keys] = 0
            mask[..., keys] = math.log(grid**3 - keys)
        if padded:
            k = torch.cat([k, k_pad.to(k.dtype).view(1, h, 1, hd).expand(n, h, 1, hd)], dim=2)
            v = torch.cat([v, v_pad.to(v.dtype).view(1, h, 1, hd).expand(n, h, 1, hd)], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, a, b, c, dim))


def _axis_segments(length: int, window: int) -> list[tuple[slice, int, int]]:
    """Split one axis into (slice, number of windows, real extent per window): full windows, then the tail."""
    full, tail = divmod(length, window)
    segments = []
    if full:
        segments.append((slice(0, full * window), full, window))
    if tail:
        segments.append((slice(full * window, length), 1, tail))
    return segments


class Block3D(nn.Module):
    """Pre-norm transformer block; `window_size` 0 means global attention."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        grid_size: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.window_size = window_size
        rel_size = (window_size if window_size > 0 else grid_size) if use_rel_pos else None
        self.attn = Attention3D(dim, num_heads, qkv_bias=qkv_bias, rel_pos_size=rel_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        bsz, d, h, w, dim = x.shape
        ws = self.window_size
        out = torch.empty_like(x)
        for sd, nd, ed in _axis_segments(d, ws):
            for sh, nh, eh in _axis_segments(h, ws):
                for sw, nw, ew in _axis_segments(w, ws):
                    part = x[:, sd, sh, sw].reshape(bsz, nd, ed, nh, eh, nw, ew, dim)
                    windows = part.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, ed, eh, ew, dim)
                    y = self.attn(windows, grid=ws)
                    y = y.reshape(bsz, nd, nh, nw, ed, eh, ew, dim).permute(0, 1, 4, 2, 5, 3, 6, 7)
                    out[:, sd, sh, sw] = y.reshape(bsz, nd * ed, nh * eh, nw * ew, dim)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.window_size > 0:
            y = self._windowed_attention(y)
        else:
            if not (x.shape[1] == x.shape[2] == x.shape[3]):
                raise ValueError(f"global attention needs a cubic token grid, got {tuple(x.shape[1:4])}")
            y = self.attn(y, grid=x.shape[1])
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    """Non-overlapping 3D patches -> channels-last tokens (B, D, H, W, C)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Stride == kernel, so the convolution is one matrix product over flattened patches: cuDNN picks a
        # slow implicit-GEMM kernel for this shape in bf16 (4 ms of 41 at batch 32 on an H200).
        bsz, chans, d, h, w = x.shape
        p = self.proj.kernel_size[0]
        if d % p or h % p or w % p:
            raise ValueError(f"image sides {(d, h, w)} must be multiples of the patch size {p}")
        patches = x.reshape(bsz, chans, d // p, p, h // p, p, w // p, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(bsz, d // p, h // p, w // p, chans * p**3)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class ImageEncoderViT3D(nn.Module):
    """3D ViT with windowed/global blocks and a conv neck;
    (B, 1, S, S, S) -> (B, out_chans, S/p, S/p, S/p)."""

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 384,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed3D(patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim)) if use_abs_pos else None
        self.blocks = nn.ModuleList(
            Block3D(
                embed_dim,
                num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                grid_size=grid,
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_chans, self.img_size, self.img_size, self.img_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"image encoder expects (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
