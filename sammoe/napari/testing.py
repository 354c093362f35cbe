"""A simulated mouse click on a layer, for the plugin's tests and benchmarks (no real canvas needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def simulate_click(viewer, layer, voxel, modifiers: Sequence[str] = ()) -> None:
    """Press and release the mouse on ``layer`` at layer data coordinates ``voxel``, as napari's canvas does:
    the event goes through the layer's drag callbacks (a Points layer in add mode adds on release)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    world = tuple(float(v) for v in layer.data_to_world(np.asarray(voxel, dtype=np.float64)))
    for kind, dispatch in (
        ("mouse_press", mouse_press_callbacks),
        ("mouse_release", mouse_release_callbacks),
    ):
        event = read_only_mouse_event(
            type=kind,
            position=world,
            modifiers=list(modifiers),
            pos=np.zeros(2),
            dims_displayed=list(viewer.dims.displayed),
            button=1,
        )
        dispatch(layer, event)
