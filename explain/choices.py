"""What the Explain tab offers: CAM methods, target layers, the classes worth contrasting.

Plain constants (no torch), read by the screen in the server process and by ``explain.methods``
and ``explain.contrastive`` where the model runs.
"""

from __future__ import annotations

# Each method's class in pytorch-grad-cam, by name. The library is imported on first use, not
# at start-up: its package import loads every method, scikit-learn and matplotlib, while the
# default view (Grad-CAM of the last block) is the predictor's own maps (docs/BENCHMARKS.md).
METHODS: dict[str, str] = {
    "Grad-CAM": "GradCAM",
    "Grad-CAM++": "GradCAMPlusPlus",
    "HiResCAM": "HiResCAM",
    "XGrad-CAM": "XGradCAM",
    "LayerCAM": "LayerCAM",
    "EigenCAM": "EigenCAM",
    "Score-CAM": "ScoreCAM",
}
DEFAULT_METHOD = "Grad-CAM"
# The dense blocks, and the last block after its norm and ReLU: there Grad-CAM is the class
# activation map that ``training.train_guided`` teaches to point at the lesion.
TARGET_LAYERS: tuple[str, ...] = (
    *(f"features.denseblock{i}" for i in range(1, 5)),
    "features.norm5",
)
# The classes the model confuses: the defaults of "why A rather than B".
CONFUSABLE: tuple[str, ...] = ("Bacterial Pneumonia", "Viral Pneumonia", "COVID-19")
