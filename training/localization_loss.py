"""Loss terms that teach the classifier where to look, on its own class activation maps.

With global average pooling and a linear head, the logit of class k is the spatial mean of
``W_k · f(y, x)`` over the last feature map ``f`` (CAM, Zhou et al., CVPR 2016), which is
also what Grad-CAM computes on that layer. So the map a clinician is shown is cheap and
differentiable during training, and a term on it can ask for *this* film's evidence to lie
where the radiologist drew the lesion ("Right for the Right Reasons", Ross et al., IJCAI 2017;
GAIN, Li et al., CVPR 2018).

The term is the mass of the map's spatial softmax inside a region. It cannot be met by
silencing the map (a softmax always sums to 1), which a ratio on the ReLU map can.
``pointing_hits`` and ``energy_inside`` are the pointing game and the energy share of
``training.localize`` on the network's input frame, which the trainer reports every epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_FLOOR = 1e-6  # log of a region share of 0: cells outside the region add nothing


def class_maps(features: torch.Tensor, classifier: nn.Linear) -> torch.Tensor:
    """(B, C, h, w) features after the last norm → (B, K, h, w) maps ``W_k · f``; their
    spatial mean plus the bias is the logit."""
    return torch.einsum("kc,bchw->bkhw", classifier.weight.to(features.dtype), features)


def outside_mass_loss(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """−log of the spatial softmax's mass inside ``regions``, per image.

    ``maps`` (B, h, w) are one class map per image; ``regions`` (B, H, W) the share of each
    cell inside the region, in [0, 1], at any resolution (area-resized to the maps').
    0 when all of the mass lies in the region; large when the peak is elsewhere.
    """
    if regions.shape[-2:] != maps.shape[-2:]:
        regions = F.adaptive_avg_pool2d(regions[:, None].float(), maps.shape[-2:])[:, 0]
    log_p = torch.log_softmax(maps.flatten(1).float(), dim=1)
    inside = torch.logsumexp(log_p + torch.log(regions.flatten(1).clamp_min(_FLOOR)), dim=1)
    return -inside


def outside_energy_loss(maps: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """1 − the share of the min–max normalised map's energy inside ``regions``, per image.

    The energy share that ``training.localize`` reports: a map peaked in the region but high
    everywhere else loses here, where the spatial softmax barely notices it. Normalising by
    the map's own range means it cannot be met by silencing the map.
    """
    if regions.shape[-2:] != maps.shape[-2:]:
        regions = F.adaptive_avg_pool2d(regions[:, None].float(), maps.shape[-2:])[:, 0]
    flat = maps.flatten(1).float()
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    heat = (flat - low) / (high - low + _FLOOR)
    inside = (heat * regions.flatten(1)).sum(1) / (heat.sum(1) + _FLOOR)
    return 1 - inside


def set_cross_entropy(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with a label *set* per image: −log Σ_{k ∈ allowed} p_k, mean over images.

    ``allowed`` (B, K) bool holds one class for an ordinary label (then this is plain
    cross-entropy) or several, e.g. both pneumonia classes for a pneumonia of unknown cause.
    """
    logits = logits.float()
    admitted = logits.masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(admitted, dim=1)).mean()


def target_class(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The class whose map is trained: the admitted class with the highest logit."""
    return logits.detach().masked_fill(~allowed, float("-inf")).argmax(dim=1)


def pointing_hits(maps: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """Whether each map's peak (bilinear, at the lesion masks' size) lies in its lesion."""
    size = lesions.shape[-2:]
    heat = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)
    peak = heat.flatten(1).argmax(1)
    return lesions.flatten(1).gather(1, peak[:, None])[:, 0] > 0.5


def energy_inside(maps: torch.Tensor, lesions: torch.Tensor) -> torch.Tensor:
    """Each map's normalised energy share inside its lesion, at the lesion masks' size."""
    size = lesions.shape[-2:]
    heat = F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return 1 - outside_energy_loss(heat[:, 0], lesions)
