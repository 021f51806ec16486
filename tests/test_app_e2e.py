"""The real server on loopback, called the way the README says: gradio_client → /predict."""

from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

import app
from imaging.load import load_image
from imaging.overlay import DEFAULT_COLORMAP, DEFAULT_OPACITY
from model.predictor import Predictor
from review.store import ReviewStore
from serving.model_process import LocalModel
from tests.bad_inputs import PHI, make_dicom, ramp
from tests.conftest import predict_api

pytestmark = pytest.mark.slow


def test_predict_returns_five_confidences_and_a_full_size_overlay(client, real_image):
    label, (film_path, overlay_path), _, notes, set_line, lung_line = predict_api(
        client, real_image
    )
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(confidences) == {
        "Bacterial Pneumonia",
        "COVID-19",
        "Normal",
        "Tuberculosis",
        "Viral Pneumonia",
    }
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert label["label"] == max(confidences, key=confidences.get)
    overlay = np.asarray(Image.open(overlay_path))
    assert overlay.shape[:2] == load_image(real_image).pixels.shape
    assert overlay.shape[2] == 3 and overlay.std() > 0
    assert np.asarray(Image.open(film_path)).shape[:2] == overlay.shape[:2]  # before / after
    assert "512×512" in notes
    assert "prediction set" in set_line.lower() and "prediction set" not in notes.lower()
    assert "lies on the lungs" in lung_line or "Lung fields not found" in lung_line


def test_bad_file_is_an_error_and_the_server_keeps_serving(client, real_image, tmp_path):
    junk = tmp_path / "notes.png"
    junk.write_bytes(b"this is not an image")
    with pytest.raises(Exception, match="not a readable image"):
        predict_api(client, junk)
    label = predict_api(client, real_image)[0]
    assert len(label["confidences"]) == 5


def test_screen_shows_disclaimer_model_and_untrained_banner(tiny_checkpoint, tmp_path):
    store = ReviewStore.open(tmp_path)
    model = LocalModel(Predictor.load(str(tiny_checkpoint), "cpu"))
    demo = app.build_demo(model, store=store)
    text = " ".join(str(getattr(block, "value", "")) for block in demo.blocks.values())
    assert "not a diagnostic device" in text
    assert "UNTRAINED" in text
    # The model line is filled when the page loads (the weights may still be loading before).
    assert any(fn.fn == model.describe for fn in demo.fns.values())
    assert "densenet201" in model.describe() and "device: `cpu`" in model.describe()


def test_examples_are_real_and_small():
    examples = sorted(Path(app.ASSETS, "examples").glob("*.jpg"))
    assert 5 <= len(examples) <= 10
    assert sum(p.stat().st_size for p in examples) <= 1_000_000
    assert (Path(app.ASSETS, "examples", "LICENSE.md")).is_file()


def test_predict_notes_give_every_class_share_on_the_lungs_and_outline_is_optional(
    client, real_image
):
    label, (_, plain_path), _, notes, _, _ = predict_api(client, real_image)  # 3 arguments
    listed = notes.split("Heatmap on the lungs")[1]
    for c in label["confidences"]:
        assert f"{c['label']} " in listed and " %" in listed
    outlined_path = client.predict(
        handle_file(str(real_image)),
        DEFAULT_OPACITY,
        DEFAULT_COLORMAP,
        False,
        True,
        api_name="/predict",
    )[1][1]
    plain = np.asarray(Image.open(plain_path)).astype(int)
    outlined = np.asarray(Image.open(outlined_path)).astype(int)
    changed = np.abs(outlined - plain).max(axis=2) > 60  # beyond JPEG noise
    assert 0.001 < changed.mean() < 0.2


def test_readme_api_example_runs_as_written(app_url, capsys):
    readme = (Path(app.__file__).parent / "README.md").read_text()
    code = readme.split("## API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert 'Client("http://localhost:7860/")' in code
    exec(code.replace("http://localhost:7860/", app_url), {})  # our own README
    headline, scores = capsys.readouterr().out.splitlines()[-2:]
    assert "Tuberculosis" in scores and headline.split()[-1] in scores


def test_predict_returns_the_shown_class_as_a_string(client, real_image):
    label, _, shown, *_ = predict_api(client, real_image)
    assert isinstance(shown, str) and shown == label["label"]


def test_an_uploaded_dicom_is_deleted_once_read_and_never_served_back(app_url, client, tmp_path):
    named = tmp_path / "Doe_Jane_MRN-7731-PHI.dcm"  # the name is itself an identifier
    named.write_bytes(make_dicom(ramp(256, 256)))
    with named.open("rb") as f:
        answer = httpx.post(f"{app_url}gradio_api/upload", files={"files": (named.name, f)})
    stored = Path(answer.json()[0])  # where the upload route keeps it until a request reads it
    assert stored.is_file()
    label, _, _, notes, *_ = predict_api(client, named)  # the same bytes: the same stored path
    assert not stored.exists()
    assert httpx.get(f"{app_url}gradio_api/file={stored}").status_code in (403, 404)
    uploads = stored.parents[1]  # the app's whole upload folder
    assert not [p for p in uploads.rglob("*") if "Doe" in p.name or "MRN" in p.name]
    assert not [p for p in uploads.rglob("*") if p.is_file() and b"MRN-7731" in p.read_bytes()]
    for value in PHI.values():
        assert value not in notes and value not in str(label)
    broken = tmp_path / "Doe_Jane_MRN-7731-PHI-2.dcm"
    broken.write_bytes(b"not a dicom file\n" * 50)
    with pytest.raises(Exception, match=r"upload\.dcm: not a readable DICOM") as err:
        predict_api(client, broken)
    assert "Doe" not in str(err.value) and "MRN" not in str(err.value)


def test_concurrent_requests_with_the_same_image_each_get_their_own_files(client, real_image):
    jobs = [
        client.submit(handle_file(str(real_image)), DEFAULT_OPACITY, DEFAULT_COLORMAP,
                      api_name="/predict")
        for _ in range(16)
    ]  # fmt: skip
    overlays = [job.result(timeout=300)[1][1] for job in jobs]
    assert len(set(overlays)) == len(jobs)  # no file shared, so none rewritten while sent
    first = np.asarray(Image.open(overlays[0]))
    for path in overlays[1:]:
        assert np.array_equal(np.asarray(Image.open(path)), first)
