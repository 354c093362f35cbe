"""Interaction shared by training, evaluation and the Predictor (pure torch/numpy, no Lightning).

- ``roi``: the ROI policy: where a crop goes for a target, given its first positive click.
- ``sliding_window``: growing a target over neighbouring crops where it touches a crop's face.
"""
