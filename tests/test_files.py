"""What the server keeps on disk: uploads read once then deleted under a neutral name, every
shown image a file of its own, and the test suite's own files only in pytest's folders."""

from __future__ import annotations

import os
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio.data_classes import FileData
from gradio.utils import get_upload_folder

from imaging.image import ImageInputError
from imaging.load import load_image
from tests.bad_inputs import PHI, make_dicom, ramp
from tests.conftest import REPO, REPO_DATA_BEFORE, files_under
from ui.files import ShownGallery, ShownImage, UploadBox, Uploads, upload_name

NAMED = "Doe_Jane_MRN-7731-PHI.dcm"  # what a DICOM export is often called


def uploaded(data: bytes, name: str = NAMED, folder: str = "0f3a") -> Path:
    """A file where Gradio's upload route puts one: <upload folder>/<hash>/<original name>."""
    path = Path(get_upload_folder()) / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (NAMED, "upload.dcm"),
        ("Smith.JPG", "upload.jpg"),
        ("Smith.John", "upload"),
        ("IM0001", "upload"),
    ],
)
def test_an_upload_is_called_by_its_kind_never_by_its_name(name, shown):
    assert upload_name(name) == shown


def test_an_upload_is_deleted_once_read_and_its_twin_reuses_the_decode():
    uploads = Uploads()
    path = uploaded(make_dicom(ramp(128, 128)))
    image = uploads.take(str(path), load_image)
    assert image.size == (128, 128) and not path.exists()
    assert not any(value in str(image.metadata) for value in PHI.values())
    # A second request that sent the same bytes at once got the same path: it is gone now.
    assert uploads.take(str(path), load_image) is image


def test_a_refused_upload_is_deleted_and_named_by_its_kind():
    uploads = Uploads()
    path = uploaded(b"not a dicom file\n" * 50, folder="9b1c")
    for _ in range(2):  # the first read, then its twin
        with pytest.raises(ImageInputError, match=r"^upload\.dcm: not a readable DICOM") as err:
            uploads.take(str(path), load_image)
        assert "Doe" not in str(err.value) and "MRN" not in str(err.value)
        assert not path.exists()


def test_a_gone_upload_not_read_recently_asks_for_it_again():
    uploads = Uploads(seconds=0.0)
    path = uploaded(make_dicom(ramp(128, 128)), folder="77aa")
    uploads.take(str(path), load_image)
    with pytest.raises(ImageInputError, match=r"no longer on the server.*upload the file again"):
        uploads.take(str(path), load_image)


def test_files_outside_the_upload_folder_are_read_but_kept(real_image):
    assert Uploads().take(str(real_image), load_image).size == (512, 512)
    assert real_image.is_file()


def test_the_upload_box_leaves_no_empty_file_behind():
    path = uploaded(make_dicom(ramp(128, 128)), folder="5e5e")
    before = set(Path(get_upload_folder()).rglob("*"))
    assert UploadBox(type="filepath").preprocess(FileData(path=str(path))) == str(path)
    gr.File(type="filepath").preprocess(FileData(path=str(path)))  # what it replaces
    added = set(Path(get_upload_folder()).rglob("*")) - before
    assert len(added) == 1 and next(iter(added)).stat().st_size == 0  # gr.File's, not ours


def test_each_response_shows_its_own_file_even_for_the_same_picture():
    drawn = np.zeros((64, 80, 3), np.uint8)
    drawn[10:30, 20:50] = (200, 40, 10)
    image = ShownImage(format="jpeg", type="numpy")
    first, second = image.postprocess(drawn), image.postprocess(drawn)
    assert first.path != second.path
    assert Path(first.path).read_bytes() == Path(second.path).read_bytes()
    assert Path(first.path).suffix == ".jpeg"
    gallery = ShownGallery(format="jpeg").postprocess([(drawn, "a"), (drawn, "b")])
    paths = [item.image.path for item in gallery.root]
    assert len(set(paths)) == 2 and [item.caption for item in gallery.root] == ["a", "b"]


def test_the_suite_writes_only_under_pytest_temporary_folders(tmp_path_factory):
    base = tmp_path_factory.getbasetemp().resolve()
    for name in ("LUNGCAM_DATA_DIR", "GRADIO_TEMP_DIR", "GRADIO_EXAMPLES_CACHE"):
        assert Path(os.environ[name]).resolve().is_relative_to(base), name
    assert Path(get_upload_folder()).resolve().is_relative_to(base)
    assert files_under(REPO / "data") == REPO_DATA_BEFORE
