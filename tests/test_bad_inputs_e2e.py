"""The bad-input corpus through the running app: each upload is a named error, and the server
keeps serving; DICOM tags and the not-a-chest-X-ray warning reach the screen without PHI."""

from __future__ import annotations

import re

import numpy as np
import pytest
from gradio_client import handle_file
from PIL import Image

from tests.bad_inputs import PHI, make_dicom, ramp, write_bad_inputs
from tests.conftest import predict_api

pytestmark = pytest.mark.slow


def test_every_bad_file_is_a_named_error_then_a_good_image_works(client, real_image, tmp_path):
    cases = write_bad_inputs(tmp_path)
    unexpected = {}
    for path, pattern in cases:
        with pytest.raises(Exception) as caught:  # gr.Error reaches the client as AppError
            predict_api(client, path)
        if not re.search(pattern, str(caught.value)):
            unexpected[path.name] = str(caught.value)
    assert unexpected == {}
    label, _, _, notes, _, _ = predict_api(client, real_image)
    assert len(label["confidences"]) == 5 and "512×512" in notes


def test_lateral_dicom_shows_tags_and_warning_but_no_phi(client, tmp_path):
    path = tmp_path / "IM0007"  # no extension: found by its preamble
    path.write_bytes(
        make_dicom(ramp(256, 200), ViewPosition="LL", WindowCenter=128, WindowWidth=256)
    )
    label, _, _, notes, _, _ = predict_api(client, path)
    assert label["label"] == "Not a frontal chest X-ray?"  # the headline is not a class
    assert not label.get("confidences")  # folded away unless asked for
    assert "DICOM" in notes and "Modality: DX" in notes and "ViewPosition: LL" in notes
    assert "lateral" in notes
    for value in PHI.values():
        assert value.split("^")[0] not in notes


def test_colour_photo_gets_the_not_a_chest_xray_warning(client, tmp_path):
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[..., 0], rgb[..., 1] = 220, np.linspace(0, 255, 200).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    label, _, _, notes, _, _ = predict_api(client, path)
    assert label["label"] == "Not a chest X-ray?" and not label.get("confidences")
    assert "may not be a frontal chest X-ray" in notes and "colour" in notes
    shown = client.predict(handle_file(str(path)), 0.35, "inferno", True, api_name="/predict")[0]
    assert shown["label"] == "Not a chest X-ray?" and len(shown["confidences"]) == 5
