"""One image's result: what ``Predictor`` returns and everything downstream reads.

Plain numpy (no torch): the model process sends these to the server process, which never
imports torch, and the screen, the CSV and the PDF are drawn from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from imaging.image import LoadedImage, fit_within
from model.config import class_index
from model.crop import CropBox
from model.heatmaps import normalise_cam
from model.lungs import LungMask, heatmap_share_on_lungs
from model.ood import OODCheck

SHARE_GRID = 256


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
        mask = self._share_mask()
        if mask is None:
            return None
        return heatmap_share_on_lungs(self.heatmap(class_index, mask.shape[::-1]), mask)

    def flat_lung_share(self) -> float | None:
        """The on-lung share of a flat map over what the network saw: the baseline that a
        heatmap's share is read against (a map that knows nothing scores this)."""
        mask = self._share_mask()
        if mask is None:
            return None
        flat = self.place(np.ones((1, 1), np.float32), mask.shape[::-1])
        return float(mask[flat > 0].mean()) if (flat > 0).any() else None

    def _share_mask(self) -> np.ndarray | None:
        """The lung mask on the grid of at most ``SHARE_GRID`` px a side (None: not found)."""
        if self.lungs is None or not self.lungs.found:
            return None
        size = fit_within(self.image.size, SHARE_GRID)
        mask = cv2.resize(self.lungs.mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        return mask.astype(bool)
