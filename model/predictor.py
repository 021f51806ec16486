"""The seam between the model and everything that uses it.

The app, the batch CLI, evaluation and the benchmark all call ``Predictor``: load a
checkpoint once, then image → calibrated probabilities + every class's Grad-CAM.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imaging.image import LoadedImage
from model.cam import AllClassGradCAM
from model.checkpoint import load_checkpoint
from model.config import CONFIG_FILE, ModelConfig, resolve_model_spec
from model.crop import CropBox, lung_box
from model.lungs import LungMask
from model.network import create_network
from model.ood import assess, load_feature_stats, load_whole_image_stats
from model.prediction import Prediction
from model.segmenter import DEFAULT_SEGMENTER, LungSegmenter
from model.transforms import build_transform, to_tensor


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


def calibrated_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Temperature scaling (Guo et al., ICML 2017): ``softmax(logits / T)`` over classes.

    The one place the checkpoint's temperature is applied: the predictor (on its device) and
    evaluation (float64 on the CPU) both call it.
    """
    return torch.softmax(logits / temperature, dim=1)


class Predictor:
    """A loaded model plus its preprocessing; thread-safe for inference.

    On CUDA the weights and inputs are channels_last; ``amp=True`` runs the trunk under bf16
    autocast (off by default, see ``pick_autocast``); ``compile=True`` wraps the trunk in
    ``torch.compile`` (on CUDA with ``mode="reduce-overhead"``, which replays it as CUDA graphs).
    """

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        device: torch.device,
        *,
        amp: bool | None = None,
        compile: bool = False,
        segmenter: LungSegmenter | None = None,
    ) -> None:
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
        self.cam = AllClassGradCAM(self.model, config.target_layer, pick_autocast(device, amp))
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" else None
            self.cam.trunk = torch.compile(self.cam.trunk, mode=mode)

    @classmethod
    def load(
        cls,
        spec: str | None = None,
        device: str | None = None,
        *,
        amp: bool | None = None,
        compile: bool = False,
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
            segmenter=load_segmenter(segmenter, resolved),
        )

    @property
    def description(self) -> str:
        return self.config.description

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
