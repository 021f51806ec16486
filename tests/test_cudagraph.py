"""Fixed-batch-size replay (model/cudagraph.py) gives the plain path's results, row for row."""

import numpy as np
import pytest
import torch

from imaging.load import load_image
from model.cam import AllClassGradCAM
from model.config import ModelConfig
from model.cudagraph import StaticBatches, capture_cuda_graph, padded_sizes, replay_eagerly
from model.network import create_network
from model.predictor import Predictor
from tests.conftest import lung5_images

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_network(ModelConfig(input_size=(3, 64, 64))).eval()


@pytest.fixture
def exact_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 convolutions and matmuls without TF32: padded and unpadded batches may pick
    different kernels, and TF32's 10-bit mantissa would then differ by more than 1e-4."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.parametrize(
    ("max_size", "expected"),
    [(1, (1,)), (6, (1, 2, 4, 6)), (8, (1, 2, 4, 8)), (128, (1, 2, 4, 8, 16, 32, 64, 128))],
)
def test_padded_sizes(max_size, expected):
    assert padded_sizes(max_size) == expected


def test_padded_sizes_refuse_zero():
    with pytest.raises(ValueError, match="at least 1; got 0"):
        padded_sizes(0)


def _counting(capture):
    """``capture`` that also records the batch size of every capture."""
    sizes = []

    def counted(step, static_input):
        sizes.append(len(static_input))
        return capture(step, static_input)

    return counted, sizes


def _check_static_batches(model, capture, tolerance, device="cpu", layout=torch.contiguous_format):
    """One runner (max size 4) through batches that fit, pad (3 → 4) and chunk (8 → 4 + 4),
    each batch new data, against the plain step; every size is captured once."""
    cam = AllClassGradCAM(model)
    counted, captures = _counting(capture)
    runner = StaticBatches(cam.step, counted, max_size=4)
    for seed, n in enumerate((1, 3, 8)):
        batch = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        batch = batch.to(device, memory_format=layout)
        expected = cam.step(batch)
        got = runner(batch)
        assert [t.shape for t in got] == [t.shape for t in expected]
        for ours, plain in zip(got, expected, strict=True):
            torch.testing.assert_close(ours, plain, atol=tolerance, rtol=tolerance)
    assert captures == [1, 4] == runner.captured_sizes


def test_static_batches_equal_the_plain_step_on_cpu(model):
    _check_static_batches(model, replay_eagerly, 1e-5)


def test_static_batches_refuse_an_empty_batch(model):
    runner = StaticBatches(AllClassGradCAM(model).step, replay_eagerly)
    with pytest.raises(ValueError, match="empty batch"):
        runner(torch.zeros(0, 3, 64, 64))


def test_predictor_with_graphs_equals_without_on_cpu(tiny_checkpoint):
    images = [load_image(p) for p in lung5_images()[:3]]
    plain = Predictor.load(str(tiny_checkpoint), "cpu").predict_many(images)
    static = Predictor.load(str(tiny_checkpoint), "cpu", cuda_graphs=True)
    assert static.cam.run.sizes[:3] == (1, 2, 4)
    for a, b in zip(static.predict_many(images), plain, strict=True):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        np.testing.assert_allclose(a.raw_cams, b.raw_cams, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-5)
    assert static.cam.run.captured_sizes == [4]


def test_compile_and_graphs_exclude_each_other(tiny_checkpoint):
    with pytest.raises(ValueError, match="exclude each other"):
        Predictor.load(str(tiny_checkpoint), "cpu", compile=True, cuda_graphs=True)


@needs_cuda
def test_cuda_graph_replay_equals_eager(model, exact_cuda):
    cuda_model = model.to("cuda", memory_format=torch.channels_last)
    try:
        _check_static_batches(cuda_model, capture_cuda_graph, 1e-4, "cuda", torch.channels_last)
    finally:
        model.to("cpu", memory_format=torch.contiguous_format)
