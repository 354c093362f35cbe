"""Synthetic CT/MR-like phantoms written as an nnU-Net v2 dataset, deterministic from a seed.

Structures (full label map; names and values are stable, see ``LABELS``):

=====  ================  =======  =====================================================================
value  name              kind     what it looks like
=====  ================  =======  =====================================================================
1      liver             general  lobed organ (union of 3 ellipsoids), right upper abdomen
2      kidney_left       general  bright ellipsoid, posterior left
3      kidney_right      general  bright ellipsoid, posterior right
4      spleen            general  ellipsoid, left
5      spinal_cord       task     thin tube (radius ~3 mm) wobbling along z inside a CSF/bone canal, low
                                  contrast
6      nodules           task     2-4 small spheres (radius 3-5 mm) inside the lungs
7      textured_lesion   task     sphere inside the liver with the liver's mean intensity but a coarse texture
=====  ================  =======  =====================================================================

Unlabelled context: body (soft tissue), lungs (air-like), vertebral bone ring, CSF. The ``general`` classes
are easy for a general model (brightness-defined blobs); the ``task`` classes are the kind a general model
segments poorly (thin, tiny, texture-defined): the demo trains experts on them.

Public API
----------
- ``LABELS``: name -> value; ``GENERAL_CLASSES``, ``TASK_CLASSES``: tuples of names.
- ``make_phantom_case(seed, shape=(96, 96, 64), spacing=(1.5, 1.5, 2.5), modality="CT", lps=False)
  -> (image float32, label uint8, affine)``.
- ``make_phantom_dataset(out_dir, n_cases=8, seed=0, shape=..., spacing=..., n_test=0, modality="CT",
  classes=None, vary_orientation=True, overwrite=False) -> Path``: writes ``dataset.json`` (labels name ->
  value, ``channel_names``, ``numTraining``, ``file_ending`` and a ``sammoe`` block listing general/task
  classes),
  ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` and, with ``n_test``, ``imagesTs``/``labelsTs``.
  ``classes`` keeps only those classes, renumbered 1..k in the given order (e.g. a task dataset
  ``classes=["spinal_cord"]`` has spinal_cord = 1). ``vary_orientation`` stores every other case with LPS axes
  (same anatomy in world space) so the RAS reorientation is exercised.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sammoe.errors import DataError

LABELS: dict[str, int] = {
    "background": 0,
    "liver": 1,
    "kidney_left": 2,
    "kidney_right": 3,
    "spleen": 4,
    "spinal_cord": 5,
    "nodules": 6,
    "textured_lesion": 7,
}
GENERAL_CLASSES: tuple[str, ...] = ("liver", "kidney_left", "kidney_right", "spleen")
TASK_CLASSES: tuple[str, ...] = ("spinal_cord", "nodules", "textured_lesion")

# Tissue intensities: CT in HU, MR in arbitrary T1-like units. (mean, noise std inside the tissue)
_TISSUE = {
    "CT": {
        "air": -1000,
        "body": 15,
        "lung": -820,
        "liver": 62,
        "kidney": 160,
        "spleen": 95,
        "bone": 650,
        "csf": 12,
        "cord": 34,
        "nodule": 30,
        "noise": 12.0,
        "texture": 70.0,
        "bias": 0.06,
    },
    "MR": {
        "air": 0,
        "body": 300,
        "lung": 40,
        "liver": 420,
        "kidney": 240,
        "spleen": 330,
        "bone": 120,
        "csf": 600,
        "cord": 520,
        "nodule": 260,
        "noise": 15.0,
        "texture": 120.0,
        "bias": 0.25,
    },
}


def _rotation_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _ellipsoid(xyz: np.ndarray, centre, radii, angle: float = 0.0) -> np.ndarray:
    d = (xyz - np.asarray(centre)) @ _rotation_z(angle)
    return ((d / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def make_phantom_case(
    seed: int | Sequence[int],
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    modality: str = "CT",
    lps: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One phantom: (image float32, label uint8 with ``LABELS`` values, 4x4 RAS affine), centred at 0 mm."""
    from scipy import ndimage

    if modality not in _TISSUE:
        raise ValueError(f"modality must be one of {sorted(_TISSUE)}, got {modality!r}")
    t = _TISSUE[modality]
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in shape)
    spacing_arr = np.asarray(spacing, dtype=np.float64)
    extent = np.asarray(shape) * spacing_arr
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing_arr)]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), -1)  # RAS mm, centre 0
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    a, b, ez = 0.45 * extent[0], 0.38 * extent[1], extent[2]

    def jitter(scale: float = 0.04) -> np.ndarray:
        return rng.uniform(-scale, scale, 3) * np.array([a, b, ez])

    def size(lo: float = 0.85, hi: float = 1.15) -> float:
        return float(rng.uniform(lo, hi))

    image = np.full(shape, float(t["air"]), dtype=np.float32)
    label = np.zeros(shape, dtype=np.uint8)
    noise_std = np.full(shape, t["noise"], dtype=np.float32)

    body = (x / a) ** 2 + (y / b) ** 2 <= 1.0
    image[body] = t["body"]

    lung_top = 0.05 * ez
    for side in (-1, 1):
        lung = _ellipsoid(
            xyz,
            np.array([side * 0.48 * a, 0.1 * b, 0.3 * ez]) + jitter(),
            [0.36 * a * size(), 0.55 * b * size(), 0.32 * ez],
            rng.uniform(-0.2, 0.2),
        )
        lung &= body & (z > lung_top)
        image[lung] = t["lung"]
        n_nodules = int(rng.integers(1, 3))
        inside = np.argwhere(ndimage.binary_erosion(lung, iterations=3))
        for _ in range(n_nodules):
            if len(inside) == 0:
                break
            centre = xyz[tuple(inside[rng.integers(len(inside))])]
            radius = float(rng.uniform(3.0, 5.0))
            nod = _ellipsoid(xyz, centre, [radius] * 3)
            image[nod] = t["nodule"]
            label[nod] = LABELS["nodules"]

    liver = np.zeros(shape, dtype=bool)
    liver_c = np.array([-0.42 * a, 0.12 * b, -0.12 * ez]) + jitter()
    for offset, radii in (
        ((0.0, 0.0, 0.0), (0.38 * a, 0.5 * b, 0.2 * ez)),
        ((0.22 * a, 0.2 * b, 0.05 * ez), (0.22 * a, 0.3 * b, 0.14 * ez)),
        ((-0.05 * a, -0.25 * b, -0.1 * ez), (0.24 * a, 0.28 * b, 0.13 * ez)),
    ):
        liver |= _ellipsoid(
            xyz,
            liver_c + np.asarray(offset) + jitter(0.02),
            np.asarray(radii) * size(0.9, 1.1),
            rng.uniform(-0.4, 0.4),
        )
    liver &= body & (z <= lung_top + 0.05 * ez)
    image[liver] = t["liver"]
    label[liver & (label == 0)] = LABELS["liver"]

    spleen = (
        _ellipsoid(
            xyz,
            np.array([0.55 * a, -0.05 * b, -0.05 * ez]) + jitter(),
            np.array([0.16 * a, 0.3 * b, 0.14 * ez]) * size(),
            rng.uniform(-0.5, 0.5),
        )
        & body
    )
    image[spleen] = t["spleen"]
    label[spleen] = LABELS["spleen"]

    for side, name in ((1, "kidney_left"), (-1, "kidney_right")):  # RAS: +x is the patient's left
        kid = (
            _ellipsoid(
                xyz,
                np.array([side * 0.42 * a, -0.45 * b, -0.3 * ez]) + jitter(),
                np.array([0.13 * a, 0.2 * b, 0.16 * ez]) * size(),
                side * rng.uniform(0.2, 0.6),
            )
            & body
        )
        image[kid] = t["kidney"]
        label[kid] = LABELS[name]

    # Spine: a bone ring around a CSF canal holding the cord, wobbling along z.
    phase, amp = rng.uniform(0, 2 * np.pi), rng.uniform(1.0, 3.0)
    cx = amp * np.sin(2 * np.pi * z / ez + phase)
    cy = -0.72 * b + 0.5 * amp * np.cos(2 * np.pi * z / ez + phase)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    cord_r = float(rng.uniform(2.6, 3.4))
    image[(r <= 4.2 * cord_r) & body] = t["bone"]
    image[r <= 2.0 * cord_r] = t["csf"]
    cord = r <= cord_r
    image[cord] = t["cord"]
    label[cord] = LABELS["spinal_cord"]

    # Texture-defined lesion inside the liver: same mean, coarse high-variance texture.
    candidates = np.argwhere(ndimage.binary_erosion(label == LABELS["liver"], iterations=4))
    if len(candidates):
        centre = xyz[tuple(candidates[rng.integers(len(candidates))])]
        lesion = _ellipsoid(xyz, centre, [float(rng.uniform(7.0, 11.0))] * 3) & (label == LABELS["liver"])
        coarse = rng.normal(0.0, 1.0, tuple(max(2, n // 3) for n in shape))
        pattern = ndimage.zoom(coarse, np.asarray(shape) / np.asarray(coarse.shape), order=0)[
            tuple(slice(0, n) for n in shape)
        ]
        pattern = pattern / (pattern[lesion].std() + 1e-6) if lesion.any() else pattern
        image[lesion] = t["liver"] + t["texture"] * (pattern[lesion] - pattern[lesion].mean())
        label[lesion] = LABELS["textured_lesion"]

    # Partial volume, bias field, noise.
    image = ndimage.gaussian_filter(image, sigma=0.6 / (spacing_arr / spacing_arr.min()))
    coef = rng.normal(0.0, 1.0, 4)
    field = 1.0 + t["bias"] * np.tanh(
        coef[0] * x / extent[0]
        + coef[1] * y / extent[1]
        + coef[2] * z / extent[2]
        + coef[3] * (x * y) / (extent[0] * extent[1]) * 4
    )
    floor = t["air"]
    image = (image - floor) * field + floor
    image = image + rng.normal(0.0, 1.0, shape).astype(np.float32) * noise_std
    if modality == "MR":
        image = np.maximum(image, 0.0)

    affine = np.diag([*spacing_arr, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * spacing_arr
    if lps:  # same anatomy in world space, stored with L/P axes
        image, label = image[::-1, ::-1].copy(), label[::-1, ::-1].copy()
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
        affine = affine @ flip
    return image.astype(np.float32), label, affine


def make_phantom_dataset(
    out_dir: str | Path,
    n_cases: int = 8,
    seed: int = 0,
    shape: Sequence[int] = (96, 96, 64),
    spacing: Sequence[float] = (1.5, 1.5, 2.5),
    n_test: int = 0,
    modality: str = "CT",
    classes: Sequence[str] | None = None,
    vary_orientation: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write an nnU-Net v2 phantom dataset into ``out_dir`` (see the module docstring).

    Returns ``out_dir``."""
    import nibabel as nib

    out = Path(out_dir)
    if (out / "dataset.json").exists() and not overwrite:
        raise DataError(f"{out}: a dataset already exists here; pass overwrite=True or choose another folder")
    keep = list(classes) if classes is not None else [n for n in LABELS if n != "background"]
    unknown = [c for c in keep if c not in LABELS or c == "background"]
    if unknown:
        raise DataError(f"phantom classes {unknown} do not exist; choose from {list(LABELS)[1:]}")
    lut = np.zeros(256, dtype=np.uint8)
    for new, name in enumerate(keep, start=1):
        lut[LABELS[name]] = new
    labels = {"background": 0, **{name: i for i, name in enumerate(keep, start=1)}}

    def write(split: str, index: int) -> None:
        case = f"phantom_{index:03d}"
        image, label, affine = make_phantom_case(
            [seed, index], shape, spacing, modality, lps=vary_orientation and index % 2 == 1
        )
        for folder, name, data in (
            (f"images{split}", f"{case}_0000.nii.gz", image),
            (f"labels{split}", f"{case}.nii.gz", lut[label]),
        ):
            (out / folder).mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(data, affine)
            img.set_qform(affine, code=1)
            img.set_sform(affine, code=1)
            nib.save(img, out / folder / name)

    out.mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        write("Tr", i)
    for i in range(n_cases, n_cases + n_test):
        write("Ts", i)
    meta = {
        "name": out.name,
        "description": "sammoe synthetic phantoms (sammoe.data.phantoms)",
        "channel_names": {"0": modality},
        "labels": labels,
        "numTraining": n_cases,
        "numTest": n_test,
        "file_ending": ".nii.gz",
        "sammoe": {
            "general": [c for c in GENERAL_CLASSES if c in keep],
            "task": [c for c in TASK_CLASSES if c in keep],
            "seed": seed,
            "shape": list(map(int, shape)),
            "spacing": list(map(float, spacing)),
        },
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
