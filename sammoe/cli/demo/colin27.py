"""The bundled Colin27 T1 MRI with its AAL atlas, laid out as a one-case nnU-Net test set for the demo."""

from __future__ import annotations

import json
from pathlib import Path

# Deep grey-matter structures of the AAL atlas (single components that fit a 96 mm crop at 1.5 mm).
COLIN27_CLASSES = {
    "hippocampus_L": 37,
    "amygdala_L": 41,
    "caudate_L": 71,
    "putamen_L": 73,
    "pallidum_L": 75,
    "thalamus_L": 77,
}


def write_colin27_dataset(root: Path) -> Path:
    """The Colin27 T1 + AAL as a test-only nnU-Net dataset (empty training folders) with the classes above."""
    import nibabel as nib
    import numpy as np

    from sammoe.assets import ASSETS

    source = ASSETS / "colin27"
    if (root / "dataset.json").is_file():
        return root
    for folder in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    image = nib.load(source / "ch2.nii.gz")
    atlas = nib.load(source / "aal.nii.gz")
    aal = np.asarray(atlas.dataobj)
    label = np.zeros(aal.shape, dtype=np.uint8)
    for new_value, aal_value in enumerate(COLIN27_CLASSES.values(), start=1):
        label[aal == aal_value] = new_value
    nib.save(image, root / "imagesTs" / "colin27_0000.nii.gz")
    nib.save(nib.Nifti1Image(label, atlas.affine), root / "labelsTs" / "colin27.nii.gz")
    meta = {
        "name": "colin27",
        "description": "Colin27 T1 MRI with AAL deep grey-matter labels (bundled with sammoe)",
        "channel_names": {"0": "MR"},
        "labels": {"background": 0, **{name: i for i, name in enumerate(COLIN27_CLASSES, start=1)}},
        "numTraining": 0,
        "numTest": 1,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root
