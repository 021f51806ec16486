"""The network: timm's DenseNet201 with a LungCAM head. We never write a DenseNet ourselves."""

from __future__ import annotations

import timm
import torch
from torch import nn

from model.config import ModelConfig


def create_network(config: ModelConfig, pretrained: bool = False) -> nn.Module:
    """Build ``config.architecture`` with ``config.num_classes`` outputs via ``timm.create_model``.

    ``pretrained=True`` asks timm for its ImageNet weights (``densenet201.tv_in1k``), which
    needs the Hugging Face hub; without network this raises a ``RuntimeError`` that says so.
    """
    try:
        model = timm.create_model(
            config.architecture, pretrained=pretrained, num_classes=config.num_classes
        )
    except RuntimeError as err:  # timm raises RuntimeError for an unknown name
        if "Unknown model" in str(err):
            raise ValueError(
                f"unknown architecture {config.architecture!r}; timm has e.g. 'densenet201'"
            ) from err
        raise
    except OSError as err:  # hub unreachable while fetching pretrained weights
        raise RuntimeError(
            f"could not fetch ImageNet weights for {config.architecture!r} from the Hugging "
            f"Face hub ({type(err).__name__}: {err}). Run without --pretrained, or start from a "
            "local checkpoint with --init-from."
        ) from err
    if config.output_stride == 16:
        keep_last_block_resolution(model)
    model.pretrained_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        "input_size": config.input_size,
        "mean": config.mean,
        "std": config.std,
        "label_names": config.label_names,
        "num_classes": config.num_classes,
    }
    return model


def keep_last_block_resolution(model: nn.Module) -> None:
    """Output stride 16: the last transition keeps its norm and 1×1 conv but not its 2×2
    average pool, so the last dense block (and its Grad-CAM) sees 14×14 at 224 px instead
    of 7×7. No parameter changes; the last block costs 4× its FLOPs (by count, about +25 %
    in all)."""
    transition = model.features.transition3
    if not isinstance(transition.pool, nn.AvgPool2d):
        raise ValueError(f"{type(model).__name__} has no average-pooling last transition")
    transition.pool = nn.Identity()


def split_at(model: nn.Module, layer_name: str) -> tuple[nn.Module, nn.Module]:
    """Split ``model`` into (trunk, rest) at the child ``layer_name`` of ``model.features``.

    ``trunk(x)`` returns that layer's output; ``rest(a)`` maps it to logits. For the last
    dense block ``rest`` is only norm5 + pooling + the linear classifier, which is what makes
    the all-class Grad-CAM cheap.
    """
    prefix = "features."
    names = [name for name, _ in model.features.named_children()]
    child = layer_name.removeprefix(prefix)
    if not layer_name.startswith(prefix) or child not in names:
        raise ValueError(
            f"target layer {layer_name!r} is not a child of model.features; "
            f"choose one of {[prefix + n for n in names]}"
        )
    cut = names.index(child) + 1
    children = list(model.features.children())
    return nn.Sequential(*children[:cut]), _Tail(nn.Sequential(*children[cut:]), model)


class _Tail(nn.Module):
    """The layers after the split point plus the model's pooling and classifier."""

    def __init__(self, features: nn.Sequential, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self._forward_head = model.forward_head  # bound method: shares the model's weights
        self.classifier = model.get_classifier()  # the same module, not a copy

    def pre_logits(self, a: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, C)`` that the classifier turns into logits."""
        return self._forward_head(self.features(a), pre_logits=True)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pre_logits(a))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
