"""Interaction shared by training, evaluation and the Predictor (pure torch/numpy, no Lightning).

- ``roi``: the ROI policy: where a crop goes for a target, given its first positive click.
- ``sliding_window``: growing a target over neighbouring crops where it touches a crop's face.
- ``rollout``: the click loops on crops: the official training interaction and evaluation protocol, and the
  step functions that run a model inside them.
- ``crop_evaluation``: a batch of crops through the evaluation protocol for every model, scored (Dice/NSD per
  case, class and click count) on the original grid when the batch carries it.
"""
