"""The official SAM-Med3D pipeline, for speed comparisons in the benchmarks (not used by sammoe itself).

`official_modules(ours)`: medim's encoder, prompt encoder and decoder with our model's weights.
`OfficialPipeline`: a click-centred target as the official inference script processes one class
(torchio: deep copy of the subject, Resample to 1.5 mm, ToCanonical, CropOrPad centred on a mask,
ZNormalization over voxels > 0; the medim model; trilinear upsample; tio.Resample back onto the input grid).
The official script centres the crop on the ground truth's bounding box; here the "mask" is the clicked
voxel, which centres the crop on the click through the same CropOrPad code.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def official_modules(ours):
    """medim's SAM_Med3D built from our SamMed3D's config, with the same weights."""
    import medim.models.sam_med3d as med

    cfg = ours.config
    grid = cfg.image_size // cfg.patch_size
    official = med.SAM_Med3D(
        image_encoder=med.ImageEncoderViT3D(
            img_size=cfg.image_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.encoder_embed_dim,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_num_heads,
            mlp_ratio=cfg.mlp_ratio,
            out_chans=cfg.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=lambda dim: torch.nn.LayerNorm(dim, eps=1e-6),
            use_rel_pos=True,
            window_size=cfg.window_size,
            global_attn_indexes=list(cfg.encoder_global_attn_indexes),
        ),
        prompt_encoder=med.PromptEncoder3D(
            embed_dim=cfg.prompt_embed_dim,
            image_embedding_size=(grid,) * 3,
            input_image_size=(cfg.image_size,) * 3,
            mask_in_chans=cfg.mask_in_chans,
        ),
        mask_decoder=med.MaskDecoder3D(
            transformer_dim=cfg.prompt_embed_dim,
            num_multimask_outputs=cfg.num_multimask_outputs,
            iou_head_depth=cfg.iou_head_depth,
            iou_head_hidden_dim=cfg.iou_head_hidden_dim,
        ),
    )
    official.load_state_dict(ours.state_dict())
    return official


@dataclass
class OfficialTarget:
    """What a refinement click needs: the ROI's embedding and affine, the input grid, the clicks so far."""

    embedding: torch.Tensor
    roi_affine: np.ndarray
    input_grid: tuple
    points: list
    labels: list
    low: torch.Tensor


class OfficialPipeline:
    def __init__(self, model, crop: int = 128, spacing: float = 1.5) -> None:
        self.model = model.eval()
        self.crop = crop
        self.spacing = spacing

    def open(self, path):
        import torchio as tio

        image = tio.ScalarImage(path)
        image.load()
        return tio.Subject(image=image)

    def first_click(self, subject, click_vox) -> tuple[np.ndarray, OfficialTarget]:
        """Preprocess around the click, encode, decode; the mask on the input grid and the target's state."""
        import torchio as tio

        grid = (tuple(subject["image"].spatial_shape), subject["image"].affine)
        subject = copy.deepcopy(subject)  # the official script deep-copies the subject for every class
        # A 5-voxel cube around the click: a single voxel can vanish in the nearest-neighbour resampling.
        mark = torch.zeros_like(subject["image"].data, dtype=torch.uint8)
        i, j, k = (int(round(v)) for v in click_vox)
        mark[0, max(i - 2, 0) : i + 3, max(j - 2, 0) : j + 3, max(k - 2, 0) : k + 3] = 1
        subject.add_image(tio.LabelMap(tensor=mark, affine=subject["image"].affine), "label")
        subject = tio.Resample(self.spacing)(subject)
        subject = tio.ToCanonical()(subject)
        subject = tio.CropOrPad(mask_name="label", target_shape=(self.crop,) * 3)(subject)
        subject = tio.ZNormalization(masking_method=lambda x: x > 0)(subject)
        roi = subject["image"].data[None].float()
        where = torch.nonzero(subject["label"].data[0]).float().mean(0).round().tolist()
        with torch.no_grad():
            embedding = self.model.image_encoder(roi)
        low = torch.zeros(1, 1, self.crop // 4, self.crop // 4, self.crop // 4)
        state = OfficialTarget(embedding, subject["image"].affine, grid, [where], [1], low)
        return self.refine(state, None), state

    def refine(self, state: OfficialTarget, click_roi) -> np.ndarray:
        """One decoder step with every click so far, upsampled and resampled back onto the input grid."""
        import torchio as tio

        if click_roi is not None:
            state.points.append(list(click_roi))
            state.labels.append(1)
        points = torch.tensor([state.points], dtype=torch.float32)
        labels = torch.tensor([state.labels], dtype=torch.float32)
        with torch.no_grad():
            sparse, dense = self.model.prompt_encoder(points=(points, labels), boxes=None, masks=state.low)
            state.low, _ = self.model.mask_decoder(
                image_embeddings=state.embedding,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            prob = torch.sigmoid(F.interpolate(state.low, size=(self.crop,) * 3, mode="trilinear"))
        label = tio.LabelMap(tensor=(prob[0] > 0.5).to(torch.uint8), affine=state.roi_affine)
        back = tio.Resample(state.input_grid)(tio.Subject(label=label))  # nearest for a label map
        return back["label"].data[0].numpy()
