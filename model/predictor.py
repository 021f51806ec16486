"""The seam between the model and everything that uses it.

The app, the batch CLI, evaluation and the benchmark all call ``Predictor``: load a
checkpoint once, then image → calibrated probabilities + every class's Grad-CAM.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from imaging.image import LoadedImage, fit_within
from model.cam import AllClassGradCAM, normalise_cam
from model.checkpoint import load_checkpoint
from model.config import CONFIG_FILE, ModelConfig, calibrated_softmax, class_index
from model.cudagraph import capture_for
from model.network import create_network
from model.ood import OODCheck, assess, load_feature_stats, load_whole_image_stats
from model.segmenter import DEFAULT_SEGMENTER, LungMask, LungSegmenter, heatmap_share_on_lungs
from model.transforms import CropBox, build_transform, lung_box, to_tensor

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "model"
MODEL_ENV = "LUNGCAM_MODEL"
SHARE_GRID = 256


def resolve_model_spec(requested: str | None = None) -> str | None:
    """Which checkpoint to serve: ``--model``, else ``$LUNGCAM_MODEL``, else the bundled one.

    ``None`` means no checkpoint exists: the app then runs untrained weights with a banner.
    """
    if requested:
        return requested
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    return str(BUNDLED_MODEL) if (BUNDLED_MODEL / CONFIG_FILE).is_file() else None


def load_segmenter(requested: str | None, checkpoint: str | None) -> LungSegmenter | None:
    """The lung segmenter: ``requested``, else ``<checkpoint>/segmenter``, else the bundled one
    (None when there is none, e.g. a bare clone without ``assets/segmenter``)."""
    if requested:
        return LungSegmenter.load(requested)
    if checkpoint and (Path(checkpoint) / "segmenter" / CONFIG_FILE).is_file():
        return LungSegmenter.load(Path(checkpoint) / "segmenter")
    if (DEFAULT_SEGMENTER / CONFIG_FILE).is_file():
        return LungSegmenter.load(DEFAULT_SEGMENTER)
    return None


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when available (or asked for), CPU otherwise."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class Prediction:
    """One image's result: calibrated probabilities and raw CAMs for every class."""

    label_names: list[str]
    probabilities: np.ndarray  # (K,), softmax(logits / temperature)
    logits: np.ndarray  # (K,)
    raw_cams: np.ndarray  # (K, h, w) at feature-map resolution, before normalisation
    image: LoadedImage
    features: np.ndarray | None = None  # (D,) pooled pre-logit features of the same forward
    ood: OODCheck = field(default_factory=OODCheck)  # the not-a-chest-X-ray guard's verdict
    box: CropBox | None = None  # the part of the image the network saw (None: all of it)
    lungs: LungMask | None = None  # the lung fields, when a segmenter is loaded
    prediction_set: list[str] | None = None  # conformal set, most probable first (None: no sets)
    set_alpha: float | None = None  # the set's miscoverage level α (a 1 − α set)

    @property
    def uncertain(self) -> bool | None:
        """More than one class in the conformal set (None: the model has no sets)."""
        return None if self.prediction_set is None else len(self.prediction_set) > 1

    @property
    def top_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def top_label(self) -> str:
        return self.label_names[self.top_index]

    def class_index(self, class_name: str) -> int:
        """The index of ``class_name``, or a ``ValueError`` naming the valid classes."""
        return class_index(self.label_names, class_name)

    def confidences(self) -> dict[str, float]:
        pairs = zip(self.label_names, self.probabilities, strict=True)
        return {name: float(p) for name, p in pairs}

    @property
    def cropped(self) -> bool:
        """Whether the network saw only part of the image (its lung fields)."""
        return self.box is not None and not self.box.covers(self.image.pixels)

    def heatmap(self, class_index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Class ``class_index``'s map in [0, 1] at ``size`` (width, height), default image size.

        When the network saw a crop, the map covers the crop and is 0 outside it.
        """
        if not 0 <= class_index < len(self.label_names):
            raise ValueError(
                f"class index {class_index} out of range 0..{len(self.label_names) - 1}"
            )
        return self.to_image(self.raw_cams[class_index], size)

    def to_image(self, raw: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """A raw (h, w) CAM of what the network saw → [0, 1] map over the image at ``size``
        (default the image's own), 0 outside the crop."""
        size = size or self.image.size
        if not self.cropped:
            return normalise_cam(raw, size)
        return self.place(normalise_cam(raw, self.box.size), size)

    def place(self, seen: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """A map over what the network saw (any resolution) → over the whole image at ``size``
        (default the image's own), 0 outside the crop."""
        size = size or self.image.size
        box = self.box if self.cropped else CropBox.whole(self.image.pixels)
        return box.paste(seen, self.image.size, size)

    def lung_share(self, class_index: int) -> float | None:
        """Share of class ``class_index``'s heatmap energy on the lung fields (None: not found).

        Computed on a grid of at most ``SHARE_GRID`` px a side: the 7×7 map holds no finer
        detail, and a 2048² upload would otherwise cost a full-size map per class.
        """
        if self.lungs is None or not self.lungs.found:
            return None
        size = fit_within(self.image.size, SHARE_GRID)
        mask = cv2.resize(self.lungs.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        return heatmap_share_on_lungs(self.heatmap(class_index, size), mask.astype(bool))


def pick_autocast(device: torch.device, amp: bool | None = None) -> torch.dtype | None:
    """The trunk's autocast dtype when ``amp`` is true: bf16 (fp16 on CUDA without bf16).

    ``None`` (automatic) means float32 everywhere: on an H100 at batch 1 and 8, bf16 autocast
    made DenseNet201 slower, not faster (docs/BENCHMARKS.md), and on CPUs it usually is too.
    """
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


class Predictor:
    """A loaded model plus its preprocessing; thread-safe for inference.

    On CUDA the weights and inputs are channels_last; ``amp=True`` runs the trunk under bf16
    autocast (off by default, see ``pick_autocast``); ``compile=True`` wraps the trunk in
    ``torch.compile``; ``cuda_graphs=True`` replays the trunk + head-gradient step as one CUDA
    graph per batch size, captured on first use (model/cudagraph.py; off by default until
    measured on a GPU; on a CPU the same static-batch path runs eagerly, with no speed-up).
    """

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        device: torch.device,
        *,
        amp: bool | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        segmenter: LungSegmenter | None = None,
    ) -> None:
        if compile and cuda_graphs:
            raise ValueError("compile=True and cuda_graphs=True exclude each other; choose one")
        if config.lung_crop_margin is not None and segmenter is None:
            raise ValueError(
                f"model {config.version!r} crops its input to the lung fields and needs the lung "
                f"segmenter; none was found (bundled: {DEFAULT_SEGMENTER})"
            )
        self.segmenter = segmenter.to(device) if segmenter is not None else None
        self.memory_format = (
            torch.channels_last if device.type == "cuda" else torch.contiguous_format
        )
        self.model = model.to(device, memory_format=self.memory_format).eval()
        self.config = config
        self.device = device
        self.transform = build_transform(config, train=False)
        self.ood_stats = load_feature_stats(config.ood)  # None until `training.ood_fit fit`
        self.whole_image_stats = load_whole_image_stats(
            config.ood, segmenter.weights_sha256 if segmenter else None
        )
        capture = capture_for(device) if cuda_graphs else None
        self.cam = AllClassGradCAM(
            self.model, config.target_layer, pick_autocast(device, amp), capture
        )
        if compile:
            self.cam.trunk = torch.compile(self.cam.trunk)

    @classmethod
    def load(
        cls,
        spec: str | None = None,
        device: str | None = None,
        *,
        amp: bool | None = None,
        compile: bool = False,
        cuda_graphs: bool = False,
        segmenter: str | None = None,
    ) -> Predictor:
        """Load ``spec`` (see ``resolve_model_spec``); untrained weights if there is none.

        The lung segmenter comes from ``segmenter``, else a ``segmenter/`` folder inside the
        checkpoint folder, else the bundled one; without any, no lung fields are measured.
        """
        target = pick_device(device)
        resolved = resolve_model_spec(spec)
        if resolved is None:
            torch.manual_seed(0)
            config = ModelConfig()
            model = create_network(config)
        else:
            model, config = load_checkpoint(resolved, target)
        return cls(
            model,
            config,
            target,
            amp=amp,
            compile=compile,
            cuda_graphs=cuda_graphs,
            segmenter=load_segmenter(segmenter, resolved),
        )

    @property
    def description(self) -> str:
        sha = self.config.weights_sha256[:12] or "none"
        return f"{self.config.architecture} · {self.config.version} · sha256 {sha}"

    def preprocess(self, pixels: np.ndarray) -> torch.Tensor:
        """(H, W) uint8 → (3, H', W') tensor through the checkpoint's own transform."""
        return to_tensor(pixels, self.transform)

    def frame(self, images: Sequence[LoadedImage]) -> tuple[list[LungMask | None], list[CropBox]]:
        """Each image's lung fields (when a segmenter is loaded) and the box the network sees:
        the lung fields ± the config's margin for a model trained on such crops, else all."""
        if self.segmenter is None:
            return [None] * len(images), [CropBox.whole(im.pixels) for im in images]
        lungs = self.segmenter.analyse_many([im.pixels for im in images])
        margin = self.config.lung_crop_margin
        boxes = [
            (lung_box(found.mask, margin) if margin is not None else None)
            or CropBox.whole(im.pixels)
            for im, found in zip(images, lungs, strict=True)
        ]
        return list(lungs), boxes

    def batch(
        self, images: Sequence[LoadedImage], boxes: Sequence[CropBox] | None = None
    ) -> torch.Tensor:
        """Decoded images → one (B, 3, H, W) input on the predictor's device and memory format
        (channels_last on CUDA): the one way every caller builds a batch. ``boxes`` are the
        crops from ``frame`` (found again when not given)."""
        boxes = boxes if boxes is not None else self.frame(images)[1]
        batch = torch.stack(
            [self.preprocess(box.apply(im.pixels)) for im, box in zip(images, boxes, strict=True)]
        )
        return batch.to(self.device, memory_format=self.memory_format)

    def predict(self, image: LoadedImage) -> Prediction:
        return self.predict_many([image])[0]

    def predict_many(self, images: Sequence[LoadedImage]) -> list[Prediction]:
        """Batch of decoded images → one ``Prediction`` each, from a single batched forward."""
        lungs, boxes = self.frame(images)
        logits, maps, pooled = self.cam(self.batch(images, boxes), return_pooled=True)
        logits_np = logits.cpu().numpy()
        features = pooled.cpu().numpy()
        probabilities = calibrated_softmax(logits, self.config.temperature).cpu().numpy()
        sets = self.config.conformal
        return [
            Prediction(
                self.config.label_names,
                probabilities[i],
                logits_np[i],
                maps[i],
                im,
                features[i],
                assess(
                    im,
                    features[i],
                    self.ood_stats,
                    lungs[i],
                    whole_image_stats=self.whole_image_stats,
                ),
                boxes[i],
                lungs[i],
                prediction_set=sets.named_set(probabilities[i], self.config.label_names)
                if sets
                else None,
                set_alpha=sets.alpha if sets else None,
            )
            for i, im in enumerate(images)
        ]
