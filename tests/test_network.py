"""DenseNet201 as the brief describes it, built through timm."""

import pytest
import torch

from model.config import ModelConfig
from model.network import count_parameters, create_network, split_at


@pytest.fixture(scope="module")
def densenet():
    return create_network(ModelConfig()).eval()


def test_dense_blocks_have_6_12_48_32_layers(densenet):
    counts = [len(getattr(densenet.features, f"denseblock{i}")) for i in range(1, 5)]
    assert counts == [6, 12, 48, 32]


def test_bottleneck_is_1x1_to_128_then_3x3_to_32(densenet):
    layer = densenet.features.denseblock3.denselayer7
    assert layer.conv1.kernel_size == (1, 1) and layer.conv1.out_channels == 128
    assert layer.conv2.kernel_size == (3, 3) and layer.conv2.out_channels == 32


def test_transitions_halve_channels_and_pool(densenet):
    for i in range(1, 4):
        transition = getattr(densenet.features, f"transition{i}")
        assert transition.conv.out_channels * 2 == transition.conv.in_channels
        assert transition.pool.kernel_size == 2


def test_stem_gives_64x56x56_and_head_sees_1920_features(densenet):
    assert densenet.features.conv0.kernel_size == (7, 7)
    with torch.no_grad():
        stem = densenet.features[:3](torch.zeros(1, 3, 224, 224))
        assert stem.shape == (1, 64, 56, 56)
        assert densenet.forward_features(torch.zeros(1, 3, 224, 224)).shape == (1, 1920, 7, 7)
    assert densenet.num_features == 1920


@pytest.mark.parametrize(("classes", "millions"), [(5, 18.1), (1000, 20.0)])
def test_parameter_count(classes, millions):
    labels = [f"c{i}" for i in range(classes)]
    assert (
        round(count_parameters(create_network(ModelConfig(label_names=labels))) / 1e6, 1)
        == millions
    )


def test_split_at_last_block_recomposes_the_network(densenet):
    trunk, tail = split_at(densenet, "features.denseblock4")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tail(trunk(x)), densenet(x))


def test_split_at_unknown_layer_names_the_choices(densenet):
    with pytest.raises(ValueError, match=r"features\.denseblock3"):
        split_at(densenet, "features.nope")


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'densenet999'"):
        create_network(ModelConfig(architecture="densenet999"))
