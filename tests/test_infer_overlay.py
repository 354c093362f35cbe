"""The `--png` picture says what it shows: on an image whose axes are stored flipped and permuted, slices and
ticks name the voxel indices of the file as stored (not of the reoriented array drawn), every panel cuts
through the target's first positive click (so its marker shows), and the legend sits below every label."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from sammoe.data.io import Volume
from sammoe.inference import outputs
from sammoe.inference.targets import Segmentation, Target, TargetResult

# stored axis 0 -> P (flipped), 1 -> S, 2 -> L (flipped): the drawing reorients all three
AFFINE = np.array([[0.0, 0.0, -2.0, 40.0], [-0.8, 0.0, 0.0, 15.0], [0.0, 1.2, 0.0, -20.0], [0, 0, 0, 1]])
CLICK = (30, 10, 5)  # stored i, j, k; the reoriented array has it at x 18, y 9, z 10


@pytest.fixture
def drawn(monkeypatch):
    """([each figure drawn], [the keyword arguments of each overlay_slices call of the picture])."""
    figures: list[Figure] = []
    calls: list[dict] = []
    legend, draw = Figure.legend, outputs.overlay_slices

    def spy_legend(self, *args, **kwargs):  # one legend per figure
        figures.append(self)
        return legend(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "legend", spy_legend)
    monkeypatch.setattr(outputs, "overlay_slices", lambda *a, **k: calls.append(k) or draw(*a, **k))
    return figures, calls


def _segmentation(mask_far_from_click: bool) -> tuple[Segmentation, list[Target]]:
    rng = np.random.default_rng(0)
    volume = Volume(array=rng.normal(size=(40, 30, 24)).astype(np.float32), affine=AFFINE)
    mask = np.zeros(volume.shape, bool)
    if mask_far_from_click:
        mask[20:29, 12:20, 8:14] = True  # the click lies outside the mask, far from its centroid
    else:
        mask[26:35, 6:15, 2:9] = True
    result = TargetResult("t", 1, mask, None, "foundation", None, 0.0, 2, 0, 1, click=CLICK)
    targets = [Target([list(CLICK), [32, 10, 5]], [1, 0], "t")]
    return Segmentation.compose([result], volume, 1, {}), targets


def test_panels_cut_through_the_first_positive_click_named_by_stored_indices(drawn):
    seg, targets = _segmentation(mask_far_from_click=True)
    png = outputs.overlay_png(seg, targets)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,), (kwargs,) = drawn
    assert tuple(kwargs["centre"]) == CLICK  # not the mask's centroid
    sagittal, coronal, axial = figure.axes[:3]
    assert [ax.get_title() for ax in (sagittal, coronal, axial)] == [
        "sagittal, slice k = 5",
        "coronal, slice i = 30",
        "axial, slice j = 10",
    ]
    # ticks count stored indices: the sagittal panel spans i (anterior, i = 0, on the left) by j
    assert sagittal.get_xlim() == (-0.5, 39.5) and sagittal.get_ylim() == (-0.5, 29.5)
    assert coronal.get_xlim() == (-0.5, 23.5)  # k = 0 is the patient's right: on the screen's left
    assert "index i" in sagittal.get_xlabel() and "index j" in sagittal.get_ylabel()
    for ax, (col, row) in zip((sagittal, coronal, axial), ((30, 10), (5, 10), (5, 30))):
        markers = [line for line in ax.get_lines() if line.get_marker() == "+"]
        assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in markers] == [(col, row)]


@pytest.mark.parametrize("ground_truth", [False, True])
@pytest.mark.parametrize("geometry", ["flipped", "phantom"])
def test_the_legend_sits_below_every_axis_label(drawn, ground_truth, geometry):
    """Below the labels of all three panels (a 96^3-ish phantom's axial panel reached below its top)."""
    if geometry == "flipped":
        seg, targets = _segmentation(mask_far_from_click=False)
        image, affine, centre = seg.volume.array, AFFINE, CLICK
    else:
        image = np.random.default_rng(1).normal(size=(96, 96, 40)).astype(np.float32)
        affine, centre = np.diag([-1.0, -1.0, 1.0, 1.0]), (48, 48, 20)
    mask = np.zeros(image.shape, bool)
    mask[tuple(slice(c - 4, c + 4) for c in centre)] = True
    clicks = [(centre, True), ((centre[0] + 1, *centre[1:]), False)]
    gt = mask if ground_truth else None  # a fourth legend entry makes the legend wider
    outputs.overlay_slices(image, gt, mask, affine=affine, centre=centre, clicks=clicks, title="t (label 1)")
    (figure,), _ = drawn
    renderer = figure.canvas.get_renderer()
    (legend,) = figure.legends
    top = legend.get_window_extent(renderer).y1
    for ax in figure.axes:
        assert top <= ax.get_tightbbox(renderer).y0, ax.get_title()  # labels and ticks all clear of it
