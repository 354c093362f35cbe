"""Predictor: an image and clicks in, a label map on the image's own grid out (no ground truth needed).

- ``Predictor(model, device=None, route=None, ...)``: ``model`` is a ``SamMed3D`` or a ``SamMoE``; ``route``
  forces one decoder. ``Predictor.load(checkpoint, experts=None, gate=None, ...)``: "turbo", "demo" or a path.
    - ``set_image(image, affine=None)``: a path, a ``Volume`` or an array + voxel -> RAS mm affine.
    - ``predict(targets, probabilities=False, progress=False) -> Segmentation``: ``progress`` True (a bar on
      a terminal) or a function (done, total, result) called after each target.
    - ``add_click(target, point, positive=True, space="voxel") -> TargetResult``: refinement on the cached
      embedding and the target's previous low-res logits.
``Target``, ``TargetResult`` and ``Segmentation`` are defined in ``sammoe.inference.targets``.
How a prediction is made (SAM-Med3D inference, centred on clicks instead of ground truth): the model's grid
(spacing, RAS) is computed from the header and each crop of ``img_size``^3, centred on the target's first
positive click, is sampled alone (``data.lazy_resample``, equal to resampling the whole volume), z-normalised
and encoded once; the clicks are fed one at a time, each step with every click so far and the previous
low-res logits as mask prompt (zeros on the first step), exactly the official interactive loop; the mask is
sigmoid(trilinear upsample) mapped back onto the input grid (linear, inside the crop's footprint only), then
> 0.5. Targets whose crops start at one voxel share one encode and are decoded in batches (the work is
ordered by crop, ``inference.decoding``); ``share_roi`` > 0 also reuses ROIs whose centre lies within that
fraction of the crop (faster, but off-centre crops lose Dice). A target whose mask reaches a face of its crop
grows into neighbouring windows (``interact.sliding_window``). ``Target.route`` picks one target's decoder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from sammoe.data.inverse import invert
from sammoe.data.io import Volume, as_volume
from sammoe.data.lazy_resample import LazyResampled
from sammoe.data.preprocess import Preprocessor, Resampled
from sammoe.errors import ConfigError, DataError
from sammoe.inference.arguments import (
    check_image_arguments,
    check_target_key,
    expert_names_argument,
    number_option,
    targets_argument,
)
from sammoe.inference.decoding import ClickDecoder
from sammoe.inference.devices import bf16_pays, usable_device
from sammoe.inference.progress import Report, TargetProgress
from sammoe.inference.results import finish_target
from sammoe.inference.roi_cache import EncodedRoi, RoiCache, TargetState
from sammoe.inference.targets import (
    SPACES,
    Segmentation,
    Target,
    TargetResult,
    check_target,
    chosen_route,
    to_input_voxels,
)
from sammoe.model.moe import FOUNDATION, SamMoE
from sammoe.model.sam3d import SamMed3D

MAX_UNDO = 64  # refinement states kept per target (each holds its low-res logits and its result)
DECODE_BATCH = 32  # targets of one crop decoded together: bounds the decoder's memory for many targets
ENCODE_BATCH = 8  # new crops of one call encoded together on a GPU (a CPU gains nothing from batching)

__all__ = ["SPACES", "Target", "TargetResult", "Segmentation", "Predictor", "to_input_voxels"]


class Predictor:
    """SAM-Med3D / SAM-Med3D-MoE inference on whole volumes from clicks (see the module docstring)."""

    def __init__(
        self,
        model: SamMed3D | SamMoE,
        device: str | torch.device | None = None,
        *,
        target_spacing: float | Sequence[float] = 1.5,
        autocast: bool | str = "auto",
        compile: bool = False,
        use_sliding_window: bool = True,
        share_roi: float = 0.0,
        max_windows: int = 27,
        cache_size: int = 16,
        info: dict[str, Any] | None = None,
        route: str | None = None,
    ) -> None:
        share_roi = number_option("share_roi", share_roi, 0.0, 0.5, "0 (off) to 0.5")
        cache_size, max_windows = (
            int(number_option(name, value, 1, None, "an integer of at least 1", integer=True))
            for name, value in (("cache_size", cache_size), ("max_windows", max_windows))
        )
        if device is None or str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = usable_device(device)
        self.model = model.to(self.device).eval()
        self.backbone: SamMed3D = model.backbone if isinstance(model, SamMoE) else model
        self.expert_names = model.expert_names if isinstance(model, SamMoE) else [FOUNDATION]
        self.size = int(self.backbone.img_size)
        self.pre = Preprocessor(target_spacing=target_spacing, crop_size=self.size)
        width = int(self.backbone.image_encoder.patch_embed.proj.out_channels)
        self.autocast = bf16_pays(self.device, width) if autocast == "auto" else bool(autocast)
        self.use_sliding_window = use_sliding_window
        self.max_windows = int(max_windows)
        self.info = dict(info or {})
        self.info["precision"] = "bf16 autocast" if self.autocast else "float32"
        self._encoder = self.backbone.image_encoder
        if compile:
            self._encoder = torch.compile(self._encoder)
        self.volume: Volume | None = None
        self._res: Resampled | LazyResampled | None = None
        keep = getattr(model, "reads_image", False)  # a model whose routing reads the crop keeps it
        self._rois = RoiCache(
            self.pre,
            self._run_encoder,
            self.device,
            size=cache_size,
            share_roi=share_roi,
            keep_image=keep,
            batch=ENCODE_BATCH if self.device.type == "cuda" else 1,
        )
        self._states: list[TargetState] = []
        self._want_probs = False
        self._decoding = ClickDecoder(self.model, self.expert_names, self.device, self._amp)
        self.route = route

    @property
    def route(self) -> str | None:
        """None: the model routes; ``foundation`` or an expert's name: every target goes there (but one
        whose ``Target.route`` names its own)."""
        return self._route

    @route.setter
    def route(self, name: str | None) -> None:
        if name is not None and name not in self.expert_names:
            raise ConfigError(
                f"route {name!r} is not a loaded model; choose one of {', '.join(self.expert_names)}"
            )
        self._route = name
        self.info["route"] = name
        self._decoding.forced = None if name is None else self.expert_names.index(name)

    @property
    def decoder(self) -> torch.nn.Module | None:
        """A mask decoder used instead of the model's own (a finetuning run compares its starting decoder)."""
        return self._decoding.decoder

    @decoder.setter
    def decoder(self, module: torch.nn.Module | None) -> None:
        self._decoding.decoder = module

    @classmethod
    def load(
        cls,
        checkpoint: str | os.PathLike | None = None,
        *,
        preset: str = "auto",
        experts: Iterable[str] | str | None = None,
        gate: str | os.PathLike | None = None,
        routing: str = "auto",
        **kwargs: Any,
    ) -> Predictor:
        """``load_model(...)`` wrapped in a Predictor (keyword arguments go to ``Predictor``, e.g.
        ``route="spinal_cord"`` or ``route="foundation"`` to force one decoder for every target)."""
        from sammoe.loading import load_model

        experts = expert_names_argument(experts)
        route = kwargs.get("route")
        model, info = load_model(
            checkpoint, preset=preset, experts=experts, gate=gate, route=route, routing=routing
        )
        return cls(model, info=info, **kwargs)

    # ------------------------------------------------------------------------------------------- image
    def set_image(
        self,
        image: str | os.PathLike | Volume | np.ndarray,
        affine: Any = None,
        *,
        channel: int | None = None,
    ) -> Volume:
        """Load and resample an image (a path, a ``Volume`` or an array + affine, checked as files are);
        clears every cached embedding and target."""
        check_image_arguments(image, affine)
        volume = as_volume(image, affine, channel=channel)
        self.volume = volume
        self._res = LazyResampled(volume, self.pre.target_spacing)  # each crop samples only its window
        self._rois.reset(self._res)
        self._states = []
        return volume

    @property
    def encodes(self) -> int:
        """Crops encoded since the image was set."""
        return self._rois.encodes

    # ------------------------------------------------------------------------------------------- model
    def _amp(self) -> contextlib.AbstractContextManager:
        if self.autocast:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _run_encoder(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), self._amp():
            return self._encoder(x)

    # ------------------------------------------------------------------------------------------- results
    def _finish(self, state: TargetState) -> None:
        finish_target(
            state,
            rois=self._rois,
            decoding=self._decoding,
            grid=self._res,
            expert_names=self.expert_names,
            routed_by=self._routed_by(state),
            want_probs=self._want_probs,
            sliding_window=self.use_sliding_window,
            max_windows=self.max_windows,
        )

    def _routed_by(self, state: TargetState) -> str | None:
        if state.chosen is not None:
            return "chosen"
        return getattr(self.model, "routing", None) if self._route is None else "forced"

    @property
    def results(self) -> list[TargetResult]:
        """Every target's current result, in label-value order (no label map is built)."""
        return [s.result for s in self._states]

    @property
    def segmentation(self) -> Segmentation:
        """The label map of every target so far (later targets overwrite earlier ones where they overlap)."""
        if self.volume is None:
            raise ConfigError("no image set; call set_image(...) first")
        return Segmentation.compose(
            [s.result for s in self._states], self.volume, self.encodes, dict(self.info)
        )

    # ------------------------------------------------------------------------------------------- public
    def predict(
        self,
        targets: Target | Sequence[Target],
        *,
        probabilities: bool = False,
        progress: bool | Report = False,
    ) -> Segmentation:
        """Segment targets on the current image (replacing earlier targets). Ordered by crop: targets whose
        crops start at one voxel share one encode, however many and in whatever order, and are decoded in
        batches of ``DECODE_BATCH``; results keep the caller's order. A target keeps its low-res logits and
        mask (full-grid float probabilities with ``probabilities`` only). ``progress``: see the module."""
        if self.volume is None:
            raise ConfigError("no image set; call set_image(...) first")
        targets = targets_argument(targets)
        if not targets:
            raise DataError("no targets given; give at least one target with a positive click")
        self._states = self._checked_states(targets, 0)
        self._want_probs = probabilities
        by_entry: dict[int, tuple[EncodedRoi, list[TargetState]]] = {}
        for state in self._states:
            by_entry.setdefault(id(state.entry), (state.entry, []))[1].append(state)
        bar = TargetProgress(len(self._states), progress)
        for entry, states in by_entry.values():
            for start in range(0, len(states), DECODE_BATCH):
                batch = states[start : start + DECODE_BATCH]
                self._decoding.run(entry, batch)
                for state in batch:
                    self._finish(state)
                    bar.update(state.result)
        bar.close()
        return self.segmentation

    def _checked_states(self, targets: Sequence[Target], offset: int) -> list[TargetState]:
        """Targets checked (clicks, chosen decoder), placed on their crops, numbered from ``offset`` + 1."""
        checked = [check_target(t, offset + i, self.volume) for i, t in enumerate(targets)]
        chosen = [chosen_route(t, c[0], self.expert_names) for t, c in zip(targets, checked)]
        states = self._rois.new_states(checked, offset)
        for state, route in zip(states, chosen):
            state.chosen = route
        return states

    def add_click(
        self, target: int | str, point: Sequence[float], positive: bool = True, space: str = "voxel"
    ) -> TargetResult:
        """Refine one target (index or name) with one more click; reuses its ROI embedding and last logits."""
        if self.volume is None:
            raise ConfigError("no image set; call set_image(...) and predict(...) first")
        state = self._find(target)
        if positive not in (True, False):  # 1 and 0 too; "no" or None would be read as a guess
            raise ConfigError(f"positive={positive!r}: give True (a positive click) or False (negative)")
        probe = Target([point], [1], state.name, space)  # validates the coordinates only
        _, vox, _ = check_target(probe, 0, self.volume)
        roi = state.entry.roi
        if not roi.contains(roi.input_to_roi(vox))[0]:
            raise DataError(
                f"target {state.name!r}: click {list(point)} lies outside the target's {self.size}^3 crop; "
                "refine inside the crop or start a new target there"
            )
        state.history = [*state.history[-(MAX_UNDO - 1) :], state.snapshot()]
        state.clicks = np.concatenate([state.clicks, vox])
        state.labels = np.concatenate([state.labels, [int(bool(positive))]])
        state.entry = self._rois.get(roi.start)  # cached unless evicted
        self._decoding.run(state.entry, [state])
        self._finish(state)
        state.result.count_visible(self._later(state), self.volume)  # without rebuilding the label map
        return state.result

    def undo_click(self, target: int | str) -> TargetResult:
        """Take back a target's last refinement click: its state before that click comes back as it was
        (clicks, low-res logits, mask), without decoding. ConfigError when it has no refinement to undo."""
        state = self._find(target)
        if not state.history:
            raise ConfigError(
                f"target {state.name!r} has no refinement click to undo; predict it again from its clicks"
            )
        state.restore(state.history.pop())
        state.result.count_visible(self._later(state), self.volume)
        return state.result

    def add_target(self, target: Target) -> TargetResult:
        """One more target after the current ones (label value: their number + 1), decoded alone; the other
        targets are not decoded again."""
        if self.volume is None:
            raise ConfigError("no image set; call set_image(...) first")
        (state,) = self._checked_states([target], len(self._states))
        self._states.append(state)
        self._decoding.run(state.entry, [state])
        self._finish(state)
        state.result.count_visible([], self.volume)
        for earlier in self._states[:-1]:  # the new target now covers part of them
            earlier.result.count_visible(self._later(earlier), self.volume)
        return state.result

    def remove_target(self, target: int | str) -> None:
        """Drop one target; the later ones move up one label value, nothing is decoded again."""
        state = self._find(target)
        index = self._states.index(state)
        del self._states[index]
        for i, other in enumerate(self._states[index:], start=index + 1):
            other.value = other.result.value = i
        for other in self._states[:index]:
            other.result.count_visible(self._later(other), self.volume)

    def _later(self, state: TargetState) -> list[TargetResult]:
        return [s.result for s in self._states[self._states.index(state) + 1 :]]

    def crop_footprint(self, target: int | str) -> np.ndarray:
        """Where ``add_click`` accepts clicks for this target: its crop's footprint on the input grid
        (bool)."""
        roi = self._find(target).entry.roi
        return invert(roi, np.ones(roi.size, dtype=np.uint8)).astype(bool)

    def _find(self, target: int | str) -> TargetState:
        if not self._states:
            raise ConfigError("no targets yet; call predict(...) first")
        check_target_key(target, [s.name for s in self._states])
        if isinstance(target, str):
            for s in self._states:
                if s.name == target:
                    return s
            raise ConfigError(
                f"no target named {target!r}; targets: {', '.join(s.name for s in self._states)}"
            )
        if not 0 <= int(target) < len(self._states):
            raise ConfigError(f"target index {target} out of range 0..{len(self._states) - 1}")
        return self._states[int(target)]
