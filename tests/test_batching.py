"""Concurrent requests share forwards, and each still gets its own, unchanged result."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradio_client import Client, handle_file

from imaging.load import load_image
from model.predictor import Predictor
from serving.batching import MicroBatcher
from tests.conftest import lung5_images, start_app


def slow_double(items):
    time.sleep(0.05)  # long enough for the other threads to queue up behind the first batch
    return [2 * item for item in items]


@pytest.mark.parametrize("max_batch_size", [1, 3, 8])
def test_each_caller_gets_its_own_result_in_bounded_batches(max_batch_size):
    batcher = MicroBatcher(slow_double, max_batch_size)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(batcher.submit, range(40)))
    batcher.close()
    assert results == [2 * i for i in range(40)]
    assert sum(batcher.batch_sizes) == 40
    assert max(batcher.batch_sizes) == max_batch_size  # 16 waiting callers fill every batch


def test_a_lone_request_runs_at_once_and_max_wait_gathers_company():
    alone = MicroBatcher(slow_double, 8)
    assert alone.submit(5) == 10
    assert list(alone.batch_sizes) == [1]
    alone.close()
    patient = MicroBatcher(slow_double, 8, max_wait_s=0.5)
    threads = [threading.Thread(target=patient.submit, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    patient.close()
    assert list(patient.batch_sizes) == [3]


def test_an_error_reaches_every_caller_of_its_batch_and_the_worker_keeps_serving():
    def picky(items):
        if -1 in items:
            raise ValueError("negative input")
        return items

    batcher = MicroBatcher(picky, 1)
    with pytest.raises(ValueError, match="negative input"):
        batcher.submit(-1)
    assert batcher.submit(7) == 7
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


@pytest.mark.parametrize(("size", "wait"), [(0, 0.0), (4, -1.0)])
def test_bad_settings_are_refused(size, wait):
    with pytest.raises(ValueError, match=r"max_batch_size|max_wait_s"):
        MicroBatcher(slow_double, size, wait)


def test_batched_predictions_equal_single_predictions(tiny_checkpoint):
    predictor = Predictor.load(str(tiny_checkpoint), "cpu")
    images = [load_image(p) for p in lung5_images("test", per_class=1)]
    # max_wait_s: on a busy machine the others may start after the first forward has ended
    batcher = MicroBatcher(predictor.predict_many, max_batch_size=5, max_wait_s=2.0)
    with ThreadPoolExecutor(len(images)) as pool:
        batched = list(pool.map(batcher.submit, images))
    batcher.close()
    assert max(batcher.batch_sizes) > 1
    for image, got in zip(images, batched, strict=True):
        alone = predictor.predict(image)
        assert got.image is image
        np.testing.assert_allclose(got.probabilities, alone.probabilities, atol=1e-5)
        np.testing.assert_allclose(got.raw_cams, alone.raw_cams, rtol=1e-4, atol=1e-6)
        for k in range(len(predictor.config.label_names)):
            np.testing.assert_allclose(got.heatmap(k), alone.heatmap(k), atol=1e-4)


@pytest.mark.slow
def test_concurrent_requests_through_the_server_equal_sequential_ones(tiny_checkpoint):
    images = lung5_images("test", per_class=1)
    process, url = start_app(tiny_checkpoint, "--max-batch-size", "4")
    try:

        def ask(path):
            client = Client(url, verbose=False)
            label = client.predict(handle_file(str(path)), 0.45, "jet", api_name="/predict")[0]
            return {c["label"]: c["confidence"] for c in label["confidences"]}

        sequential = [ask(path) for path in images]
        with ThreadPoolExecutor(len(images)) as pool:
            concurrent = list(pool.map(ask, images))
    finally:
        process.terminate()
        process.wait(timeout=30)
    for alone, together in zip(sequential, concurrent, strict=True):
        assert alone.keys() == together.keys()
        for name in alone:
            assert together[name] == pytest.approx(alone[name], abs=1e-5)
