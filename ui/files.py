"""What the server keeps on disk of a request, and what it serves back.

- An upload is read once and then deleted (``UPLOADS.take``): a DICOM's header holds the
  patient's name, ID and birth date, and Gradio would otherwise keep the file, under its
  original name (often the patient's name or record number), and serve it back for an hour.
- That name is never shown: messages call an upload ``upload.dcm``, ``upload.png``, …
  (``upload_name``) and the upload box hides it (``UploadBox``, ``UPLOAD_CSS``).
- Every image a response shows is a file of its own (``ShownImage``, ``ShownGallery``,
  ``ShownSlider``).
  Gradio names a drawn image's file after its bytes and rewrites it in place, so two requests
  drawing the same picture at once would share one file, rewritten while it is being sent.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from gradio.data_classes import FileData
from gradio.processing_utils import encode_pil_to_bytes
from gradio.utils import get_upload_folder, is_in_or_equal
from PIL import Image

from imaging.image import SUPPORTED_SUFFIXES, ImageInputError, LoadedImage

Decoder = Callable[[str | bytes, str], LoadedImage]  # (path or bytes, name for messages)

UPLOAD_ID = "lungcam-upload"
# The upload box shows "upload.dcm" instead of the file's own name.
UPLOAD_CSS = (
    f"#{UPLOAD_ID} .file-preview .stem {{display: none}}\n"
    f"#{UPLOAD_ID} .file-preview .ext::before {{content: 'upload'}}\n"
)
SHOWN_FOLDER = "shown"  # under Gradio's folder: the images responses show


def upload_name(path: str | Path) -> str:
    """What the screen calls an upload: "upload" and its suffix when LungCAM reads that kind
    ("upload.dcm"), never the file's own name."""
    suffix = Path(path).suffix.lower()
    return "upload" + (suffix if suffix in SUPPORTED_SUFFIXES else "")


def is_upload(path: str | Path) -> bool:
    """Whether ``path`` lies in Gradio's upload folder (where this server may delete it)."""
    return is_in_or_equal(path, get_upload_folder())


class Uploads:
    """Uploads read once and deleted, with the last few decodes kept in memory.

    Gradio stores identical uploads at one path (a folder named after the content's hash), so
    requests sending the same bytes at once share one file: the first to read it deletes it,
    and the others get its decoded image (or its refusal) from memory for ``seconds``.
    """

    def __init__(self, keep: int = 8, seconds: float = 120.0) -> None:
        self.keep = keep
        self.seconds = seconds
        self._recent: OrderedDict[str, tuple[float, LoadedImage | str]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, path: str, decode: Decoder) -> LoadedImage:
        """``decode`` the file at ``path``; an upload is deleted once read (``ImageInputError``
        when it cannot be decoded, or is gone and was not read here recently)."""
        name = upload_name(path)
        if not is_upload(path):
            return decode(path, name)
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            return self._recalled(path, name)
        try:
            image = decode(data, name)
        except ImageInputError as err:
            self._remember(path, str(err))
            raise
        else:
            self._remember(path, image)
            return image
        finally:
            Path(path).unlink(missing_ok=True)

    def _remember(self, path: str, outcome: LoadedImage | str) -> None:
        with self._lock:
            self._recent[path] = (time.monotonic(), outcome)
            self._recent.move_to_end(path)
            while len(self._recent) > self.keep:
                self._recent.popitem(last=False)

    def _recalled(self, path: str, name: str) -> LoadedImage:
        with self._lock:
            stale = [
                k for k, (at, _) in self._recent.items() if time.monotonic() - at > self.seconds
            ]
            for key in stale:
                del self._recent[key]
            _, outcome = self._recent.get(path, (0.0, None))
        if outcome is None:
            raise ImageInputError(
                f"{name}: this upload is no longer on the server (uploads are deleted once "
                "read); upload the file again"
            )
        if isinstance(outcome, str):
            raise ImageInputError(outcome)
        return outcome


UPLOADS = Uploads()


class UploadBox(gr.File):
    """``gr.File`` for one upload, handed to handlers as its path.

    ``gr.File`` also leaves an empty temporary file in Gradio's folder at every event that
    reads it; this one does not. With ``elem_id=UPLOAD_ID`` and ``UPLOAD_CSS`` the box hides
    the file's own name.
    """

    def get_block_name(self) -> str:
        return "file"

    def preprocess(self, payload: FileData | None) -> str | None:
        return None if payload is None else payload.path


def own_file(pixels: np.ndarray, folder: str | Path, fmt: str) -> str:
    """``pixels`` encoded as ``fmt`` in a new file (a name no other request gets) under
    ``folder``/``SHOWN_FOLDER``; returns its path."""
    shown = Path(folder) / SHOWN_FOLDER
    shown.mkdir(parents=True, exist_ok=True)
    handle, path = tempfile.mkstemp(prefix="image-", suffix=f".{fmt}", dir=shown)
    with os.fdopen(handle, "wb") as out:
        out.write(encode_pil_to_bytes(Image.fromarray(pixels), fmt))
    return path


class ShownImage(gr.Image):
    """An output ``gr.Image`` (numpy) that writes every response to a file of its own."""

    def get_block_name(self) -> str:
        return "image"

    def postprocess(self, value: Any) -> Any:
        if isinstance(value, np.ndarray):
            value = own_file(value, self.GRADIO_CACHE, self.format)
        return super().postprocess(value)


class ShownGallery(gr.Gallery):
    """An output ``gr.Gallery`` of (numpy image, caption) that writes each image to a file of
    its own."""

    def get_block_name(self) -> str:
        return "gallery"

    def postprocess(self, value: Any) -> Any:
        if value is not None:
            value = [self._own(item) for item in value]
        return super().postprocess(value)

    def _own(self, item: Any) -> Any:
        image, caption = item if isinstance(item, tuple) else (item, None)
        if isinstance(image, np.ndarray):
            image = own_file(image, self.GRADIO_CACHE, self.format)
        return image if caption is None else (image, caption)


class ShownSlider(gr.ImageSlider):
    """An output ``gr.ImageSlider`` of two numpy images (before, after) that writes each to a
    file of its own. The browser zooms (wheel) and pans (drag) both together."""

    def get_block_name(self) -> str:
        return "imageslider"

    def postprocess(self, value: Any) -> Any:
        if value is not None:
            value = tuple(
                own_file(image, self.GRADIO_CACHE, self.format)
                if isinstance(image, np.ndarray)
                else image
                for image in value
            )
        return super().postprocess(value)
