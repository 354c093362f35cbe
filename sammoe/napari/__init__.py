"""napari plugin: open scans, click targets, see which expert segmented them
(``pip install "sammoe[napari]"``).

Declared to napari through the ``napari.manifest`` entry point (``napari.yaml`` beside this file): a reader
for what ``sammoe.data.io`` reads, a labels writer (NIfTI, .seg.nrrd or DICOM-SEG on the source grid + the
clicks JSON that ``sammoe segment --clicks`` reads) and the segmentation dock widget. Nothing outside this
package imports it, and importing this package itself imports neither napari nor Qt (``session`` and
``geometry`` work without them), so ``import sammoe`` and the CLI stay free of the viewer.

- ``session``: targets, clicks, undo/reset/delete, moved clicks, chosen decoders, locks and the Predictor
  calls; ``targetlist``, ``views`` and ``labelmap`` its targets, what the UI reads and the label map (Qt-free)
- ``geometry``: stored voxel axes <-> the layer's axes and affine (Qt-free)
- ``models``: the model choices the widget offers and loading one; ``threads``: torch's threads in the worker
- ``reader`` / ``writer`` / ``export``: the npe2 reader and writer, and saving in the CLI's formats (Qt-free)
- ``jobs``: one model call at a time in napari worker threads
- ``layers``: the clicks and segmentation layers of an image, and the user's edits read back from them
- ``panels`` / ``table``: the model, export and target panels; ``shortcuts``: the keys
- ``widget``: the dock widget that joins them; ``interaction``: its target operations
"""

import os as _os
import sys as _sys

# The model runs in a worker thread while the GUI thread waits in Qt's event loop. With OpenMP's default
# (spinning) wait policy a 12 ms refinement click took 400-600 ms there on a busy 2-core machine, with
# passive waiting 13-16 ms (benchmarks/napari_click.py). The runtime reads the policy once, when torch loads,
# so set it only if torch is not loaded yet, and never over a value the user chose.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
