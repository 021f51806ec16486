"""Grad-CAM for every class from one forward pass (Selvaraju et al., ICCV 2017).

pytorch-grad-cam's ``GradCAM`` runs the whole network forward and backward once per class.
For a target layer near the output most of that work is repeated: the class only changes
the gradient, and the gradient of a logit with respect to the last dense block flows only
through the small head (norm5 → global pool → linear). So the trunk runs once without
autograd, its output is repeated once per class, and one backward through the head gives
every class's gradient. On a GPU the trunk may run under bf16 autocast; the head and its
gradients stay in float32.
``python -m bench.run`` measures the saving; ``tests/test_gradcam.py`` checks the maps equal
pytorch-grad-cam's to 1e-4.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model.config import DEFAULT_TARGET_LAYER
from model.network import split_at


class AllClassGradCAM:
    """Logits and raw Grad-CAM maps of all classes for a batch, from one trunk forward.

    Example::

        cam = AllClassGradCAM(model)
        logits, maps = cam(batch)  # (B, K), (B, K, h, w) at feature resolution
        heat = normalise_cam(maps[0, 2], (W, H))  # class 2 for image 0, in [0, 1]
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str = DEFAULT_TARGET_LAYER,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.target_layer = target_layer
        self.autocast_dtype = autocast_dtype  # e.g. torch.bfloat16 on CUDA: trunk only
        self.trunk, self.tail = split_at(model, target_layer)

    def __call__(
        self, batch: torch.Tensor, return_pooled: bool = False
    ) -> tuple[torch.Tensor, np.ndarray] | tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """``(logits, maps)``, plus the pooled pre-logit features ``(B, C)`` if ``return_pooled``
        (the not-a-chest-X-ray guard's input), taken from the same trunk forward."""
        if self.model.training:
            raise RuntimeError("AllClassGradCAM needs the model in eval mode (BatchNorm)")
        logits, maps, pooled = self.step(batch)
        if not return_pooled:
            return logits, maps.cpu().numpy()
        return logits, maps.cpu().numpy(), pooled

    def step(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``(B, K)``, raw maps ``(B, K, h, w)`` and pooled features ``(B, C)``, all on
        the batch's device, with no host synchronisation (so a CUDA graph can record it)."""
        amp = torch.autocast(
            batch.device.type,
            dtype=self.autocast_dtype or torch.bfloat16,
            enabled=self.autocast_dtype is not None,
            cache_enabled=False,  # each weight is cast once anyway; a cache breaks graph capture
        )
        with torch.inference_mode(), amp:
            activations = self.trunk(batch)
        activations = activations.clone().float()  # a normal tensor, usable by autograd
        n_images, n_channels, height, width = activations.shape
        n_classes = self.model.num_classes
        # One copy of each image's activations per class (expand, not repeat_interleave, whose
        # output size may be read back from the GPU: no sync inside a graph).
        shape = (n_images * n_classes, n_channels, height, width)
        repeated = activations.unsqueeze(1).expand(-1, n_classes, -1, -1, -1).reshape(shape)
        repeated.requires_grad_(True)
        with torch.enable_grad():
            pooled = self.tail.pre_logits(repeated)
            logits = self.tail.classifier(pooled).float().view(n_images, n_classes, n_classes)
            own_class = torch.diagonal(logits, dim1=1, dim2=2)  # logit k of copy k
            (grads,) = torch.autograd.grad(own_class.sum(), repeated)
        weights = grads.mean(dim=(2, 3))  # Grad-CAM: spatially averaged gradients
        maps = torch.relu(torch.einsum("nc,nchw->nhw", weights, repeated.detach()))
        maps = maps.view(n_images, n_classes, height, width)
        # Every copy of an image pools the same features: keep the first of each.
        return logits[:, 0].detach(), maps, pooled[::n_classes].detach().float()
