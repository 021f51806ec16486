"""LungCAM model: config, network, checkpoints, preprocessing, the all-class Grad-CAM, the
not-a-chest-X-ray guard and ``Predictor``, the seam everything else calls."""
