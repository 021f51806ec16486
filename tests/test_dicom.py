"""DICOM decoding: LUTs, photometry, compression, frames, refusals, and no PHI anywhere.

Every file is built in code with pydicom (``tests.bad_inputs.make_dicom``).
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from imaging.dicom import read_dicom
from imaging.image import ImageInputError
from imaging.load import load_image
from tests.bad_inputs import PHI, make_dicom, ramp


def compressed(pixels: np.ndarray, syntax) -> bytes:
    """``pixels`` stored with a compressed transfer syntax (pydicom encoder or PIL's JPEG)."""
    ds = dcmread(io.BytesIO(make_dicom(pixels)))
    if syntax == JPEGBaseline8Bit:
        jpeg = io.BytesIO()
        Image.fromarray(pixels).save(jpeg, format="JPEG", quality=95)
        ds.PixelData = encapsulate([jpeg.getvalue()])
        ds.file_meta.TransferSyntaxUID = syntax
        ds["PixelData"].VR = "OB"
    else:
        ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_monochrome2_8bit_keeps_values_and_orientation():
    loaded = read_dicom(make_dicom(ramp()), "a.dcm")
    np.testing.assert_array_equal(loaded.pixels, ramp())
    assert loaded.source_format == "DICOM" and loaded.original_mode == "MONOCHROME2"


def test_monochrome1_is_inverted():
    loaded = read_dicom(make_dicom(ramp(), photometric="MONOCHROME1"), "a.dcm")
    np.testing.assert_array_equal(loaded.pixels, 255 - ramp())
    assert loaded.pixels[0, 0] == 255 and loaded.pixels[0, -1] == 0


def test_12bit_in_16_with_rescale_spans_full_range():
    stored = ramp(high=4095, dtype=np.uint16)
    data = make_dicom(stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1024)
    loaded = read_dicom(data, "a.dcm")
    expected = np.round(stored / 4095 * 255).astype(np.uint8)  # linear map, full range
    np.testing.assert_array_equal(loaded.pixels, expected)
    assert loaded.metadata["BitsStored"] == "12"


def test_signed_16bit_with_negative_intercept():
    stored = (ramp(high=2000, dtype=np.uint16).astype(np.int16) - 1000).astype(np.int16)
    loaded = read_dicom(make_dicom(stored, signed=True, RescaleIntercept=-1024), "a.dcm")
    assert loaded.pixels[0, 0] == 0 and loaded.pixels[0, -1] == 255
    assert np.all(np.diff(loaded.pixels[0].astype(int)) >= 0)


def test_window_centre_width_clips_outside_the_window():
    stored = ramp(high=1000, dtype=np.uint16)
    loaded = read_dicom(make_dicom(stored, WindowCenter=500, WindowWidth=200), "a.dcm")
    row = loaded.pixels[0]
    assert np.all(row[stored[0] < 395] == 0)
    assert np.all(row[stored[0] > 605] == 255)
    middle = (stored[0] > 420) & (stored[0] < 580)
    assert row[middle].min() > 0 and row[middle].max() < 255
    assert np.all(np.diff(row.astype(int)) >= 0)


def test_voi_lut_sequence_is_applied():
    stored = ramp(high=255, dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    inverting = (np.arange(256)[::-1] * 16).astype("<u2")
    item.add_new("LUTData", "OW", inverting.tobytes())
    loaded = read_dicom(make_dicom(stored, bits_stored=8, VOILUTSequence=[item]), "a.dcm")
    assert loaded.pixels[0, 0] == 255 and loaded.pixels[0, -1] == 0


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGBaseline8Bit])
def test_compressed_transfer_syntaxes_decode(syntax):
    pixels = ramp()
    loaded = read_dicom(compressed(pixels, syntax), "c.dcm")
    tolerance = 3 if syntax == JPEGBaseline8Bit else 0
    assert np.abs(loaded.pixels.astype(int) - pixels).max() <= tolerance
    assert loaded.metadata["TransferSyntax"] == syntax.name


def test_multiframe_takes_first_frame_and_says_so():
    frames = np.stack([ramp(), 255 - ramp(), np.zeros_like(ramp())])
    loaded = read_dicom(make_dicom(frames), "m.dcm")
    np.testing.assert_array_equal(loaded.pixels, ramp())
    assert any("3 frames" in note for note in loaded.notes)


def test_rgb_dicom_becomes_gray_and_records_saturation():
    rgb = np.zeros((80, 80, 3), np.uint8)
    rgb[..., 0] = 200
    loaded = read_dicom(make_dicom(rgb, modality="OT"), "rgb.dcm")
    assert loaded.pixels.shape == (80, 80)
    assert loaded.saturation == pytest.approx(200 / 255, abs=1e-3)


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL"])
def test_lateral_view_warns(view):
    loaded = read_dicom(make_dicom(ramp(), ViewPosition=view), "lat.dcm")
    assert any("lateral" in note and "frontal" in note for note in loaded.notes)
    assert loaded.metadata["ViewPosition"] == view


def test_frontal_view_does_not_warn():
    assert read_dicom(make_dicom(ramp(), ViewPosition="PA"), "pa.dcm").notes == []


@pytest.mark.parametrize("modality", ["CT", "MR", "SR", "US"])
def test_non_radiograph_modality_is_refused(modality):
    with pytest.raises(ImageInputError, match=f"modality '{modality}' is not a radiograph"):
        read_dicom(make_dicom(ramp(), modality=modality), "x.dcm")


def test_no_pixel_data_is_refused():
    with pytest.raises(ImageInputError, match="no pixel data"):
        read_dicom(make_dicom(None), "x.dcm")


def test_truncated_pixel_data_is_refused():
    data = make_dicom(ramp())
    with pytest.raises(ImageInputError, match="DICOM"):
        read_dicom(data[: len(data) - 2000], "x.dcm")


@pytest.mark.parametrize("name", ["IM000001", "upload"])
def test_file_without_extension_is_detected_by_preamble(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(make_dicom(ramp()))
    loaded = load_image(path)
    assert loaded.source_format == "DICOM"
    np.testing.assert_array_equal(loaded.pixels, ramp())


def test_dcm_without_preamble_is_read_by_its_name(tmp_path):
    path = tmp_path / "bare.dcm"
    path.write_bytes(make_dicom(ramp(), preamble=False))
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(load_image(path).pixels, ramp())


def test_shown_metadata_is_whitelisted():
    loaded = read_dicom(make_dicom(ramp(), ViewPosition="PA"), "a.dcm")
    assert set(loaded.metadata) <= {
        "format",
        "mode",
        "Modality",
        "ViewPosition",
        "BodyPartExamined",
        "PhotometricInterpretation",
        "BitsStored",
        "TransferSyntax",
    }
    assert loaded.metadata["Modality"] == "DX" and loaded.metadata["BodyPartExamined"] == "CHEST"


@pytest.mark.parametrize(
    "data",
    [
        make_dicom(ramp(), ViewPosition="LL"),
        make_dicom(ramp(), modality="CT"),
        make_dicom(None),
        make_dicom(ramp())[:-2000],
        make_dicom(ramp(), WindowCenter="12345", WindowWidth=10).replace(b"12345", b"x1y2z"),
    ],
    ids=["lateral", "ct", "pixel-less", "truncated", "bad-window"],
)
def test_phi_never_reaches_fields_errors_or_logs(data, caplog):
    caplog.set_level(logging.DEBUG)
    try:
        seen = repr(load_image(data))
    except ImageInputError as err:
        seen = str(err) + repr(err.__cause__)
    seen += caplog.text
    for value in PHI.values():
        assert value not in seen
        assert value.split("^")[0] not in seen
