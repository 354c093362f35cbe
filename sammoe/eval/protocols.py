"""How each evaluation protocol places the crop and the clicks: the words every report carries."""

NOTES = (
    "Dice and {nsd} per class on the {grid} grid after {clicks} clicks, seed {seed} per target. {protocol} "
    "Later clicks are drawn uniformly from the error region of the model's own previous prediction, "
    "all clicks and the previous low-res logits fed each step, prediction = sigmoid(logits) > 0.5. "
    "Empty-ground-truth rule: an empty ground truth with an empty prediction is left out (NaN), "
    "with a non-empty prediction it scores 0."
)
CLICK_PROTOCOL = (
    "Click-centred protocol through the Predictor (the path `sammoe segment` runs, no ground truth in the "
    "crop): the first click is a random voxel of the target, the crop is centred on it, targets larger than "
    "one crop grow over neighbouring windows, refinement clicks lie inside the target's crop."
)
ROI_CLICK_PROTOCOL = (
    "Click-centred crops (validation on the crop grid): the first click is the random target voxel the crop "
    "is centred on."
)
BBOX_PROTOCOL = (
    "Official SAM-Med3D protocol, for comparison with published numbers only: the crop is centred on the "
    "ground truth's bounding box, which tells the model where the target is, so these numbers are optimistic "
    "for a user who only clicks; the first click is a random foreground voxel of that crop."
)
BBOX_FOLDER = "official_bbox"
