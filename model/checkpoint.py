"""Loading and saving checkpoints in every format LungCAM accepts.

- a folder with ``config.json`` + ``model.safetensors`` (our own format, also timm's hub layout;
  ``write_folder``/``read_folder`` are its I/O for any network, the lung segmenter's too);
- ``hf-hub:org/name``: the same two files fetched with ``huggingface_hub``;
- a plain ``.pt``/``.pth`` state dict (``module.``/``model.`` prefixes stripped), read with
  ``torch.load(weights_only=True)`` and paired with the default config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model.config import CONFIG_FILE, ModelConfig
from model.network import create_network

WEIGHTS_FILE = "model.safetensors"
HUB_PREFIX = "hf-hub:"
_STRIPPED_PREFIXES = ("module.", "model.")


class CheckpointError(ValueError):
    """A checkpoint could not be found, fetched or matched to its architecture."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """The checkpoint, or one of its folder's two files, does not exist."""


class FolderConfig(Protocol):
    """A config that is saved beside its weights and records their sha256."""

    weights_sha256: str

    def save(self, path: str | Path) -> None: ...


ConfigT = TypeVar("ConfigT", bound=FolderConfig)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: nn.Module, config: ModelConfig, out_dir: str | Path, half: bool = False
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` to ``out_dir`` (fp16 weights if ``half``)."""
    return write_folder(model.state_dict(), config, out_dir, half)


def write_folder(
    state: Mapping[str, torch.Tensor], config: FolderConfig, out_dir: str | Path, half: bool = False
) -> Path:
    """Write ``state`` as ``model.safetensors`` (floats in fp16 if ``half``) and ``config`` as
    ``config.json`` to ``out_dir``, the config recording the weights' sha256."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    config.weights_sha256 = file_sha256(out / WEIGHTS_FILE)
    config.save(out / CONFIG_FILE)
    return out


def load_checkpoint(
    spec: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelConfig]:
    """Load a model in eval mode on ``device`` with its config, from any supported ``spec``."""
    text = str(spec)
    if text.startswith(HUB_PREFIX):
        folder = _download_from_hub(text[len(HUB_PREFIX) :])
        config, state = read_folder(folder, ModelConfig.load)
    else:
        path = Path(text).expanduser()
        if not path.exists():
            raise CheckpointNotFound(
                f"checkpoint {text!r} not found; pass a folder with {CONFIG_FILE} + "
                f"{WEIGHTS_FILE}, a .pt/.pth state dict, or hf-hub:org/name"
            )
        if path.is_dir():
            config, state = read_folder(path, ModelConfig.load)
        elif path.suffix in (".pt", ".pth", ".bin"):
            config, state = ModelConfig(), _read_state_dict(path)
            config.weights_sha256 = file_sha256(path)
            config.version = path.stem
            config.trained = True
        else:
            raise CheckpointError(
                f"unsupported checkpoint file {path.name!r}; expected a folder, .pt or .pth"
            )
    with torch.device("meta"):  # no random init: every tensor comes from the checkpoint
        model = create_network(config)
    _load_matching(model, config, state)
    model.to(device).eval()
    return model, config


def _download_from_hub(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        files = [hf_hub_download(repo_id, name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    except Exception as err:  # network, auth, missing repo: all end the same way for a user
        raise CheckpointError(
            f"could not fetch hf-hub:{repo_id} from the Hugging Face hub "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'}). "
            "Without network access, download the folder elsewhere and pass its path."
        ) from err
    return Path(files[0]).parent


def read_folder(
    folder: Path,
    read_config: Callable[[Path], ConfigT],
    *,
    verify_sha256: bool = False,
    hint: str = "",
) -> tuple[ConfigT, dict[str, torch.Tensor]]:
    """(config, state dict) of a ``config.json`` + ``model.safetensors`` folder, the config's
    ``weights_sha256`` set to the weights'.

    With ``verify_sha256`` a config that records another sha256 is refused: its weights and
    config do not belong together. ``hint`` (what such a folder is) ends the missing-file error.
    """
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / n).is_file()]
    if missing:
        raise CheckpointNotFound(
            f"checkpoint folder {str(folder)!r} lacks {', '.join(missing)}"
            + (f"; {hint}" if hint else "")
        )
    try:
        config = read_config(folder / CONFIG_FILE)
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"bad {CONFIG_FILE} in {str(folder)!r}: {err}") from err
    digest = file_sha256(folder / WEIGHTS_FILE)
    if verify_sha256 and config.weights_sha256 and config.weights_sha256 != digest:
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE} has sha256 {digest[:12]}… but {CONFIG_FILE} expects "
            f"{config.weights_sha256[:12]}…; the weights and config do not belong together"
        )
    config.weights_sha256 = digest
    return config, load_file(str(folder / WEIGHTS_FILE))


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path.name!r} is not a readable torch state dict: {err}") from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name!r} holds no state dict of tensors")
    return {_strip_prefix(k): v for k, v in obj.items()}


def _strip_prefix(key: str) -> str:
    for prefix in _STRIPPED_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _load_matching(model: nn.Module, config: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` strictly, turning class-count mismatches into errors naming both sides."""
    head = state.get("classifier.weight")
    if head is not None and head.shape[0] != config.num_classes:
        raise CheckpointError(
            f"class-count mismatch: the weights have {head.shape[0]} classes, the config "
            f"expects {config.num_classes} ({', '.join(config.label_names)})"
        )
    load_weights(model, state, config.architecture)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], architecture: str) -> None:
    """Load ``state`` into ``model`` strictly, each tensor in the model's dtype; key and shape
    mismatches become a ``CheckpointError`` naming ``architecture`` and both sides."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [k for k in set(expected) & set(state) if expected[k].shape != state[k].shape]
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"architecture mismatch: the weights do not fit {architecture} "
            f"({len(missing)} missing keys e.g. {missing[:2]}, {len(unexpected)} unexpected "
            f"e.g. {unexpected[:2]}, {len(wrong_shape)} of another shape e.g. {wrong_shape[:2]})"
        )
    # assign: the checkpoint's tensors become the model's own (also one built on meta), no copy
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, assign=True)
