"""Everything between files on disk and model tensors (never imports ``sammoe.model``).

Modules: ``io`` (NIfTI/DICOM volumes, validation, atomic label writing), ``datasets`` (nnU-Net v2 / MSD /
SAM-Med3D case index), ``preprocess`` (SAM-Med3D preprocessing and its exact inverse, sliding window),
``clicks`` (click simulation on torch tensors), ``phantoms`` (synthetic datasets), ``datamodule``
(preprocessing cache, datasets, ``SegDataModule``). Import the submodule you need; this package imports
nothing.
"""
