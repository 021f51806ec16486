"""Every checkpoint format loads, and every way it can be wrong says so clearly."""

import pytest
import timm
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import ModelConfig
from model.network import create_network
from tests.conftest import make_checkpoint


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v.float(), sb[k].float()) for k, v in a.state_dict().items())


def test_folder_roundtrip_keeps_weights_and_config(tmp_path):
    config = ModelConfig(input_size=(3, 96, 96), temperature=1.7, version="v-test", trained=True)
    model = create_network(config)
    save_checkpoint(model, config, tmp_path / "ck")
    loaded, loaded_config = load_checkpoint(tmp_path / "ck")
    assert _same_weights(model, loaded)
    assert loaded_config.temperature == pytest.approx(1.7)
    assert loaded_config.image_size == (96, 96)
    assert loaded_config.version == "v-test" and loaded_config.trained
    assert len(loaded_config.weights_sha256) == 64
    assert not loaded.training


def test_fp16_checkpoint_loads_as_float32(tmp_path):
    model = create_network(ModelConfig())
    save_checkpoint(model, ModelConfig(), tmp_path / "half", half=True)
    loaded, _ = load_checkpoint(tmp_path / "half")
    weight = loaded.classifier.weight
    assert weight.dtype == torch.float32
    torch.testing.assert_close(weight, model.classifier.weight.half().float())


@pytest.mark.parametrize("prefix", ["", "module.", "model."])
def test_plain_state_dict_with_prefixes(tmp_path, prefix):
    model = create_network(ModelConfig())
    path = tmp_path / "weights.pth"
    torch.save({prefix + k: v for k, v in model.state_dict().items()}, path)
    loaded, config = load_checkpoint(path)
    assert _same_weights(model, loaded)
    assert config.num_classes == 5


def test_config_json_is_readable_by_timm(tmp_path):
    folder = make_checkpoint(tmp_path / "ck")
    model = timm.create_model(f"local-dir:{folder}")
    assert model.num_classes == 5
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 64, 64)


def test_class_count_mismatch_names_both(tmp_path):
    model = create_network(ModelConfig(label_names=["a", "b", "c"]))
    torch.save(model.state_dict(), tmp_path / "three.pt")
    with pytest.raises(CheckpointError, match="weights have 3 classes, the config expects 5"):
        load_checkpoint(tmp_path / "three.pt")


def test_architecture_mismatch_names_the_architecture(tmp_path):
    torch.save(timm.create_model("resnet18", num_classes=5).state_dict(), tmp_path / "r.pt")
    with pytest.raises(CheckpointError, match=r"architecture mismatch.*densenet201"):
        load_checkpoint(tmp_path / "r.pt")


def test_hub_without_network_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="could not fetch hf-hub:lungcam/nope"):
        load_checkpoint("hf-hub:lungcam/nope")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "not found"),
        ("notes.txt", b"hi", "unsupported checkpoint file"),
        ("junk.pt", b"not a pickle", "not a readable torch state dict"),
    ],
)
def test_bad_paths(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_folder_without_weights(tmp_path):
    ModelConfig().save(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match=r"lacks model\.safetensors"):
        load_checkpoint(tmp_path)


def test_hub_config_without_lungcam_section_gets_defaults():
    config = ModelConfig.from_dict(
        {
            "architecture": "densenet201",
            "num_classes": 5,
            "pretrained_cfg": {"input_size": [3, 256, 256]},
        }
    )
    assert config.image_size == (256, 256) and config.temperature == 1.0
    assert config.label_names[1] == "COVID-19"
