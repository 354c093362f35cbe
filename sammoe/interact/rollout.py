"""The click loops on crops: the official training interaction and evaluation protocol, shared by expert
finetuning, gate training and their validation/test (``crop_evaluation``).

Pure torch (no Lightning). A *step function* maps
(image_embeddings, points, labels, mask_prompt) to an object with `.logits` (B, 1, L, L, L) low-res logits
(and, for SamMoE, gate outputs); `decoder_step` and `moe_step` build one from a model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from sammoe.data.clicks import next_click_from_error
from sammoe.model.sam3d import SamMed3D


@dataclass
class StepOutput:
    logits: torch.Tensor
    iou: torch.Tensor | None = None
    route: torch.Tensor | None = None
    gate_logits: torch.Tensor | None = None


StepFn = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor], StepOutput]


def decoder_step(backbone: nn.Module, decoder: nn.Module | None = None) -> StepFn:
    """Step function of a plain SamMed3D (optionally with another mask decoder swapped in)."""

    def step(emb, points, labels, mask_prompt):
        logits, iou = backbone.decode(emb, points, labels, mask_prompt, decoder=decoder)
        return StepOutput(logits, iou)

    return step


def moe_step(
    moe: nn.Module, route: torch.Tensor | int | None = None, image: torch.Tensor | None = None
) -> StepFn:
    """Step function of a SamMoE: gate + selector, or a forced route (oracle / single expert). `image`: the
    encoded crop, for a gate that reads the intensities around the click."""

    def step(emb, points, labels, mask_prompt):
        out = moe.step(emb, points, labels, mask_prompt, route=route, image=image)
        return StepOutput(out.logits, out.iou, out.route, out.gate_logits)

    return step


@dataclass
class TrainingRollout:
    """What the official 11-iteration training interaction produced."""

    loss: torch.Tensor
    logits: torch.Tensor  # final full-size logits (B, 1, S, S, S)
    outputs: list[StepOutput] = field(default_factory=list)


def training_rollout(
    step: StepFn,
    embeddings: torch.Tensor,
    gt: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    generator: torch.Generator,
    num_iterations: int = 11,
    accumulate_clicks: bool = False,
    low_res_size: int | None = None,
    first_clicks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainingRollout:
    """The official SAM-Med3D training interaction (train.py `interaction`).

    Each iteration draws one click per sample uniformly from the error region of the previous prediction
    (FN -> positive, FP -> negative), feeds the previous low-res logits back as the mask prompt (not
    detached, as officially) and adds the loss. Iteration `randint(2, 8)` and the last one get no points.
    The official code binarises the previous prediction as `logits > 0.5`, not at 0.
    Officially only the newest click is fed; `accumulate_clicks=True` feeds all clicks so far.
    `first_clicks` ((B, 1, 3), (B, 1)) replaces the first simulated click: the click a click-centred crop was
    centred on, which is where a user's first click sits at inference.
    """
    bsz, size = gt.shape[0], gt.shape[-1]
    low_res_size = low_res_size or size // 4
    gt_bool = gt.bool()
    low = embeddings.new_zeros(bsz, 1, low_res_size, low_res_size, low_res_size)
    prev = torch.zeros_like(gt, dtype=embeddings.dtype)
    # The first iteration always has a click (matters only for runs shorter than the official 11).
    point_free = {int(torch.randint(2, 9, (1,), generator=generator)), num_iterations - 1} - {0}
    coords = labels = None
    loss = embeddings.new_zeros(())
    result = TrainingRollout(loss, prev)
    for it in range(num_iterations):
        if it in point_free:
            points, point_labels = None, None
        else:
            if it == 0 and first_clicks is not None:
                new_coords, new_labels = first_clicks
            else:
                new_coords, new_labels = next_click_from_error(prev.detach() > 0.5, gt_bool, generator)
            if accumulate_clicks and coords is not None:
                coords, labels = torch.cat([coords, new_coords], 1), torch.cat([labels, new_labels], 1)
            else:
                coords, labels = new_coords, new_labels
            points, point_labels = coords, labels
        out = step(embeddings, points, point_labels, low)
        low = out.logits
        prev = SamMed3D.upsample(low, size)
        if loss_fn is not None:
            loss = loss + loss_fn(prev, gt.to(prev.dtype))
        result.outputs.append(out)
    result.loss, result.logits = loss, prev
    return result


@dataclass
class EvaluationRollout:
    """Binary predictions (B, 1, S, S, S) after each requested click count, and the routes used."""

    masks: dict[int, torch.Tensor]
    routes: dict[int, torch.Tensor | None]
    clicks: tuple[torch.Tensor, torch.Tensor]  # all clicks (B, N, 3) and labels (B, N)


@torch.no_grad()
def evaluation_rollout(
    step: StepFn,
    embeddings: torch.Tensor,
    gt: torch.Tensor,
    click_counts: Sequence[int] = (1, 3, 5, 10),
    seed: int = 233,
    low_res_size: int | None = None,
    first_clicks: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> EvaluationRollout:
    """The official evaluation protocol (utils/infer_utils.py `sam_model_infer`).

    Seeded per case (233): the first click is a random foreground voxel (the error region of an empty
    prediction), each later click is drawn from the error region of the previous prediction, all clicks
    so far are fed together with the previous low-res logits, and the prediction is
    sigmoid(trilinear-upsampled logits) > 0.5. `first_clicks` replaces the simulated first click (the
    click the ROI was centred on when cropping without ground truth).
    """
    bsz, size = gt.shape[0], gt.shape[-1]
    low_res_size = low_res_size or size // 4
    generator = torch.Generator(device=gt.device).manual_seed(seed)
    gt_bool = gt.bool()
    low = embeddings.new_zeros(bsz, 1, low_res_size, low_res_size, low_res_size)
    pred = torch.zeros_like(gt_bool)
    coords = labels = None
    masks, routes = {}, {}
    for n in range(1, max(click_counts) + 1):
        if n == 1 and first_clicks is not None:
            new_coords, new_labels = first_clicks
        else:
            new_coords, new_labels = next_click_from_error(pred, gt_bool, generator)
        coords = new_coords if coords is None else torch.cat([coords, new_coords], 1)
        labels = new_labels if labels is None else torch.cat([labels, new_labels], 1)
        out = step(embeddings, coords, labels, low)
        low = out.logits
        pred = torch.sigmoid(SamMed3D.upsample(low.float(), size)) > 0.5
        if n in click_counts:
            masks[n], routes[n] = pred.clone(), out.route
    return EvaluationRollout(masks, routes, (coords, labels))
