"""The raw neighbourhood of the first positive click, and a small 3D CNN that reads texture in it.

Hand-picked statistics (``local_texture_stats``, ``robust_texture_stats``) describe the tissue under a click
in a few numbers, and they left a lesion clicked where its texture happens to be weak indistinguishable
from a liver clicked next to one. A CNN over the voxels themselves can see the texture's structure (blocks,
edges, how far it reaches). Alone, trained offline on blocks of seed-2 clicks (lesion against the rest) and
scored on the held-out seed-6 first clicks (200 lesions, 200 livers), it put every lesion above all but 2-3
livers; the statistics-only router misses 8 lesions while claiming 2 livers. Beside the trunk's features in
one router trained end to end it did worse on that path (17 lesions missed, 3 livers claimed): the MLP fits
the training clicks from the trunk first. A router that reads the block alone (``trunk=False``,
``configs/router_patch.yaml``) kept it: through `sammoe test` on seed 6 no lesion missed, 3 livers claimed;
trained with border clicks too (livers clicked within 6 mm of a lesion, ``data.border_clicks``), 2 livers.

The block is divided by the crop's noise level and centred on its median, so it does not depend on the
scanner's intensity scale or on the crop's z-normalisation; it is clipped so that air or bone next to the
click cannot dominate.
"""

from __future__ import annotations

import torch
from torch import nn

# Clip (in noise units) and scale of the block: a texture of a few times the noise fills the CNN's range.
PATCH_CLIP = 20.0
PATCH_SCALE = 5.0
# Half-sides the CNN can read: two 3^3 convolutions, a pooling step and two more need 15^3 voxels.
PATCH_RADII = range(7, 33)


def patch_side(radius: int) -> int:
    return 2 * int(radius) + 1


def click_patch(
    image: torch.Tensor,
    clicks: list[tuple[int, list[int]]],
    batch: int,
    radius: int,
    noise: torch.Tensor,
) -> torch.Tensor:
    """(batch, side^3) flattened blocks of half-side ``radius`` around each sample's click voxel, normalised
    (see the module docstring); zeros for samples without a click. ``image`` (B or 1, 1, S, S, S);
    ``clicks`` [(sample, voxel)]; ``noise`` (B or 1,) the crop noise (``sammoe.model.gate.crop_noise``).
    Voxels beyond the crop repeat its face (the click is the crop's centre at inference, so only a small
    crop or a click near a face clips)."""
    side = patch_side(radius)
    out = image.new_zeros(batch, side**3, dtype=torch.float32)
    if not clicks:
        return out
    padded = nn.functional.pad(image.float(), (radius,) * 6, mode="replicate")
    for b, (x, y, z) in clicks:
        row = b if image.shape[0] > 1 else 0
        block = padded[row, 0, x : x + side, y : y + side, z : z + side] / noise[row]
        block = (block - block.median()).clamp(-PATCH_CLIP, PATCH_CLIP) / PATCH_SCALE
        out[b] = block.flatten()
    return out


class PatchTextureNet(nn.Module):
    """(B, side^3) normalised blocks -> (B, 2 * width) texture embedding: two conv pairs with a pooling
    step between them, then the mean and the maximum of the last feature maps. Random axis flips in
    training (the texture has no orientation; the cached blocks are not augmented otherwise)."""

    def __init__(self, radius: int, width: int = 32) -> None:
        super().__init__()
        if radius not in PATCH_RADII:
            raise ValueError(
                f"patch_radius must lie in {PATCH_RADII[0]}-{PATCH_RADII[-1]} voxels (the CNN needs 15^3 or "
                f"more), got {radius}"
            )
        self.side = patch_side(radius)
        half = width // 2
        self.features = nn.Sequential(
            nn.Conv3d(1, half, 3),
            nn.GELU(),
            nn.Conv3d(half, half, 3),
            nn.GELU(),
            nn.MaxPool3d(2),
            nn.Conv3d(half, width, 3),
            nn.GELU(),
            nn.Conv3d(width, width, 3),
            nn.GELU(),
        )
        self.out_features = 2 * width

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.reshape(-1, 1, self.side, self.side, self.side)
        if self.training:
            flips = [axis for axis in (2, 3, 4) if bool(torch.rand(()) < 0.5)]
            x = x.flip(flips) if flips else x
        maps = self.features(x)
        return torch.cat([maps.mean(dim=(2, 3, 4)), maps.amax(dim=(2, 3, 4))], dim=1)
