"""Inference on real volumes: image + clicks in, label map on the input grid out, no ground truth.

In the order a segmentation runs: ``targets`` (what the user asks for: `Target`, validated clicks; what comes
back: `TargetResult`, `Segmentation`), ``devices`` (the torch device and whether bf16 pays), ``predictor``
(the `Predictor`: model, image, ROI per target, decode, map back), ``protocol`` (the evaluation click protocol
run through a Predictor, as `sammoe test` scores it).
"""
