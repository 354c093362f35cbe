"""Many targets in one call: each distinct crop is encoded once whatever the order and number of targets, the
results keep the caller's order and equal one-target runs, and no per-target crop-sized float probabilities
are kept (a thousand targets of a ViT-B model held gigabytes of them)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import numpy as np
import pytest

from sammoe.data.io import Volume
from sammoe.inference.predictor import Predictor, Target
from sammoe.interact.roi import click_centred_start

TARGETS, VOXELS = 1000, 20


def _volume() -> Volume:
    rng = np.random.default_rng(3)
    affine = np.array([[0.0, 0.0, -2.0, 40.0], [-0.8, 0.0, 0.0, 15.0], [0.0, 1.2, 0.0, -20.0], [0, 0, 0, 1]])
    array = rng.normal(100.0, 20.0, size=(40, 30, 24)).astype(np.float32)
    array[10:25, 8:20, 5:15] += 150.0
    return Volume(array=array, affine=affine)


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and Path("/proc/self/statm").is_file() else None
    except OSError:
        return None


def _held_bytes() -> int:
    """Resident memory after glibc hands back what is free (without the trim, RSS keeps freed temporaries,
    whatever the code holds)."""
    _libc().malloc_trim(0)
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(_libc() is None, reason="measures memory through glibc and /proc")
def test_a_thousand_targets_on_twenty_voxels_encode_twenty_crops_and_keep_no_crop_probabilities(
    shipped_tiny_model,
):
    volume = _volume()
    predictor = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)  # cache of 16 crops
    predictor.set_image(volume)
    voxels = [[4 + 2 * (i % 10), 6 + 14 * (i // 10), 4 + i % 3 * 7] for i in range(VOXELS)]
    starts = {tuple(click_centred_start(predictor.pre, predictor._res, v)) for v in voxels}
    assert len(starts) == VOXELS  # every voxel has a crop of its own
    alone = []
    for v in voxels:
        predictor.set_image(volume)
        seg = predictor.predict(Target([v]))
        assert seg.encodes == 1
        alone.append(seg.targets[0])

    # interleaved: each crop comes back only after the 19 others, more than the cache holds
    targets = [Target([voxels[i % VOXELS]], name=f"t{i}") for i in range(TARGETS)]
    predictor.set_image(volume)
    before = _held_bytes()
    seg = predictor.predict(targets)
    held = _held_bytes() - before
    assert seg.encodes == VOXELS
    assert [t.name for t in seg.targets] == [f"t{i}" for i in range(TARGETS)]
    for i, result in enumerate(seg.targets):
        reference = alone[i % VOXELS]
        assert result.value == i + 1 and result.click == reference.click
        np.testing.assert_array_equal(result.mask, reference.mask)
        assert result.stability == pytest.approx(reference.stability, abs=1e-3)
    assert all(s.roi_prob is None for s in predictor._states) and seg.probabilities is None
    # masks on the 40x30x24 grid are 29 MB for 1000 targets (measured: about 100 MB held in all); 64^3
    # float32 crop probabilities would be 1 GB more (measured before: 1.1 GB)
    assert held < 400 * 2**20, f"{held / 2**20:.0f} MB held after predict"


def test_new_crops_encoded_in_batches_give_the_same_masks_with_fewer_encoder_calls(shipped_tiny_model):
    """On a GPU the new crops of one call go through the encoder together (ENCODE_BATCH); forced here on the
    CPU, the batched encoder must give every target the mask that one crop at a time gives."""
    volume = _volume()
    voxels = [[4 + 4 * i, 6 + 3 * (i % 3), 4 + 3 * (i % 4)] for i in range(6)]
    targets = [Target([v], name=f"t{i}") for i, v in enumerate(voxels)]
    masks, calls = {}, {}
    for batch in (1, 4):
        predictor = Predictor(shipped_tiny_model, "cpu", use_sliding_window=False)
        predictor._rois.batch = batch
        seen = []
        hook = predictor.backbone.image_encoder.register_forward_hook(
            lambda m, i, o, seen=seen: seen.append(o.shape[0])
        )
        try:
            predictor.set_image(volume)
            seg = predictor.predict(targets)
        finally:
            hook.remove()
        masks[batch], calls[batch] = [t.mask for t in seg.targets], seen
    assert sum(calls[1]) == sum(calls[4]) == 6 and len(calls[1]) == 6
    assert calls[4] == [4, 2]  # two encoder calls instead of six
    for a, b in zip(masks[1], masks[4]):
        assert np.array_equal(a, b)
