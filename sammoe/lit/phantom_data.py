"""The shipped configs' dataset: synthetic phantoms (`sammoe.data.phantoms`) generated on the fly.

`PhantomDataModule` is `SegDataModule` over an nnU-Net v2 phantom dataset written into `root` the first time
it is needed (in `prepare_data`: once per node under DDP). An existing dataset there is reused as is, so a
changed phantom setting needs a new `root`. For real data use `sammoe.lit.datamodule.SegDataModule` with
`roots` pointing at nnU-Net / MSD / SAM-Med3D folders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sammoe.lit.datamodule import SegDataModule


class PhantomDataModule(SegDataModule):
    """SegDataModule over phantoms generated into `root` when absent.

    Args:
        root: where the phantom dataset lives (generated there if it has no dataset.json).
        n_cases: training cases (split into train/val by `val_fraction`).
        n_test: test cases (imagesTs/labelsTs), evaluated by `sammoe test`.
        phantom_seed: generator seed (a different seed gives a different but similar dataset).
        shape: phantom volume shape (voxels).
        phantom_spacing: phantom voxel spacing in mm (anisotropic, resampled to `spacing` by preprocessing).
        modality: CT or MR.
        **kwargs: everything `SegDataModule` takes except `roots` (classes, crop_size, batch_size, ...).
    """

    def __init__(
        self,
        root: str = "data/phantoms",
        n_cases: int = 12,
        n_test: int = 4,
        phantom_seed: int = 0,
        shape: list[int] | None = None,
        phantom_spacing: list[float] | None = None,
        modality: str = "CT",
        **kwargs: Any,
    ) -> None:
        super().__init__(roots=[root], **kwargs)
        self.root = Path(root)
        self.phantom = {
            "n_cases": n_cases,
            "n_test": n_test,
            "seed": phantom_seed,
            "shape": tuple(shape or (96, 96, 64)),
            "spacing": tuple(phantom_spacing or (1.5, 1.5, 2.5)),
            "modality": modality,
        }

    def prepare_data(self) -> None:
        if (self.root / "dataset.json").is_file():
            meta = json.loads((self.root / "dataset.json").read_text())
            if meta.get("numTraining") != self.phantom["n_cases"]:
                print(
                    f"sammoe: reusing the phantom dataset in {self.root} ({meta.get('numTraining')} training "
                    f"cases, not {self.phantom['n_cases']}); "
                    "delete it or choose another data.root to regenerate"
                )
            return
        from sammoe.data.phantoms import make_phantom_dataset

        print(f"sammoe: generating the phantom dataset in {self.root} ...")
        make_phantom_dataset(self.root, **self.phantom)

    def setup(self, stage: str | None = None) -> None:
        if not (self.root / "dataset.json").is_file():  # used without a Trainer (prepare_data not run)
            self.prepare_data()
        super().setup(stage)
