"""The configuration that travels with the weights (timm's ``pretrained_cfg`` idea).

A checkpoint folder holds ``config.json`` next to ``model.safetensors``. The JSON is a
superset of timm's hub format (``architecture``, ``num_classes``, ``label_names``,
``pretrained_cfg``), so ``timm.create_model("hf-hub:...")`` can read it too; LungCAM's own
fields (calibration temperature, version, the out-of-distribution statistics) sit under
``"lungcam"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from model.conformal import ConformalConfig

# Class order is alphabetical by the Kaggle "Lung Disease Dataset (4 types)" folder names,
# so it matches an ImageFolder over that layout. Display names are what the UI shows.
CLASS_FOLDERS: tuple[str, ...] = (
    "Bacterial Pneumonia",
    "Corona Virus Disease",
    "Normal",
    "Tuberculosis",
    "Viral Pneumonia",
)
CLASS_NAMES: tuple[str, ...] = (
    "Bacterial Pneumonia",
    "COVID-19",
    "Normal",
    "Tuberculosis",
    "Viral Pneumonia",
)
CONFIG_FILE = "config.json"  # beside the weights in every checkpoint folder
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_TARGET_LAYER = "features.denseblock4"
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "model"
MODEL_ENV = "LUNGCAM_MODEL"
INTERPOLATIONS = ("area", "bilinear", "bicubic", "nearest")
OUTPUT_STRIDES = (16, 32)


@dataclass
class ModelConfig:
    """Everything needed to turn an image into the right tensor and name the outputs."""

    architecture: str = "densenet201"
    label_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "area"
    temperature: float = 1.0
    version: str = "untrained"
    trained: bool = False
    target_layer: str = DEFAULT_TARGET_LAYER
    ood: dict[str, Any] | None = None
    weights_sha256: str = ""
    clahe: bool = False  # CLAHE on every image, training and serving
    lung_crop_margin: float | None = None  # crop to the lung fields ± this share; None: no crop
    conformal: ConformalConfig | None = None  # prediction sets (training.calibrate); None: none
    # 32: timm's DenseNet (7×7 last block at 224 px); 16: the last transition does not pool,
    # so the last block and its heatmaps are 14×14 (the same weights, no new parameters).
    output_stride: int = 32

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        self.label_names = list(self.label_names)
        if len(self.input_size) != 3 or self.input_size[0] != 3:
            raise ValueError(f"input_size must be (3, H, W); got {self.input_size}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")
        if self.lung_crop_margin is not None and not 0 <= self.lung_crop_margin <= 1:
            raise ValueError(f"lung_crop_margin must be in [0, 1]; got {self.lung_crop_margin}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive; got {self.temperature}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride must be one of {OUTPUT_STRIDES}; got {self.output_stride}"
            )
        if isinstance(self.conformal, dict):
            self.conformal = ConformalConfig.from_dict(self.conformal)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def class_index(self, class_name: str) -> int:
        """The output index of ``class_name``, or a ``ValueError`` naming the valid classes."""
        return class_index(self.label_names, class_name)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the network input."""
        return self.input_size[1], self.input_size[2]

    @property
    def description(self) -> str:
        """The weights in one line: architecture, version and the start of their sha256."""
        return f"{self.architecture} · {self.version} · sha256 {self.weights_sha256[:12] or 'none'}"

    def to_dict(self) -> dict[str, Any]:
        """timm-compatible hub config plus a ``lungcam`` section."""
        own = asdict(self)
        return {
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "label_names": self.label_names,
            "pretrained_cfg": {
                "input_size": list(self.input_size),
                "mean": list(self.mean),
                "std": list(self.std),
                # timm knows bilinear/bicubic only; "area" is the antialiased cv2 resize.
                "interpolation": "bilinear" if self.interpolation == "area" else self.interpolation,
                "crop_pct": 1.0,
                "num_classes": self.num_classes,
                "label_names": self.label_names,
            },
            "lungcam": {
                key: own[key]
                for key in (
                    "interpolation",
                    "temperature",
                    "version",
                    "trained",
                    "target_layer",
                    "ood",
                    "weights_sha256",
                    "clahe",
                    "lung_crop_margin",
                    "conformal",
                    "output_stride",
                )
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Read our own config.json, or a plain timm hub config (then defaults fill the rest)."""
        if "architecture" not in data:
            raise ValueError(f"config has no 'architecture' key; keys found: {sorted(data)}")
        pretrained = data.get("pretrained_cfg", {})
        labels = data.get("label_names") or pretrained.get("label_names")
        num_classes = int(data.get("num_classes", len(labels) if labels else len(CLASS_NAMES)))
        if labels is None:
            labels = (
                list(CLASS_NAMES)
                if num_classes == len(CLASS_NAMES)
                else [f"class_{i}" for i in range(num_classes)]
            )
        if len(labels) != num_classes:
            raise ValueError(
                f"config says num_classes={num_classes} but lists {len(labels)} label names"
            )
        own = dict(data.get("lungcam", {}))
        if "interpolation" not in own and pretrained.get("interpolation") in INTERPOLATIONS:
            own["interpolation"] = pretrained["interpolation"]
        return cls(
            architecture=data["architecture"],
            label_names=labels,
            input_size=tuple(pretrained.get("input_size", (3, 224, 224))),
            mean=tuple(pretrained.get("mean", IMAGENET_MEAN)),
            std=tuple(pretrained.get("std", IMAGENET_STD)),
            **own,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def class_index(label_names: list[str], class_name: str) -> int:
    """The index of ``class_name`` in ``label_names``, or a ``ValueError`` naming the valid ones.

    The one class-name lookup: the config, predictions, the Explain views and the app use it.
    """
    if class_name not in label_names:
        raise ValueError(f"unknown class {class_name!r}; choose one of {label_names}")
    return label_names.index(class_name)


def resolve_model_spec(requested: str | None = None) -> str | None:
    """Which checkpoint to serve: ``--model``, else ``$LUNGCAM_MODEL``, else the bundled one.

    ``None`` means no checkpoint exists: the app then runs untrained weights with a banner.
    """
    if requested:
        return requested
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    return str(BUNDLED_MODEL) if (BUNDLED_MODEL / CONFIG_FILE).is_file() else None
