"""Builds test uploads in code: DICOM files with PHI in their headers, and the bad-input corpus.

No binary blobs live in git; this script writes the corpus on demand::

    python tests/bad_inputs.py OUT_DIR     # one file per case, plus expected.tsv

Each bad input comes with a regular expression that the refusal message must match, so a
test can check that the message names the problem, not just that something failed.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

# Patient identifiers written into every test DICOM; none may ever come out again.
PHI = {
    "PatientName": "Doe^Jane^Q",
    "PatientID": "MRN-7731-PHI",
    "PatientBirthDate": "19610417",
    "AccessionNumber": "ACC-99821",
    "InstitutionName": "St Elsewhere Hospital",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDate": "20240102",
}


def ramp(rows: int = 96, columns: int = 80, high: int = 255, dtype=np.uint8) -> np.ndarray:
    """Values rising left → right, so orientation and inversion are checkable."""
    line = np.linspace(0, high, columns).round().astype(dtype)
    return np.tile(line, (rows, 1))


def make_dicom(
    pixels: np.ndarray | None = None,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    signed: bool = False,
    preamble: bool = True,
    **tags: object,
) -> bytes:
    """A DICOM file (bytes) with ``PHI`` tags, ``pixels`` (None: no pixel data) and ``tags``.

    ``pixels`` of shape (F, H, W) makes a multi-frame file; (H, W, 3) an RGB one.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    if pixels is not None:
        colour = pixels.ndim == 3 and pixels.shape[-1] == 3
        frames = pixels.ndim == 3 and not colour
        ds.Rows, ds.Columns = pixels.shape[1:3] if frames else pixels.shape[:2]
        if frames:
            ds.NumberOfFrames = pixels.shape[0]
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "RGB" if colour else photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(signed)
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=preamble, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    """``image`` saved as ``fmt`` (PIL format name) to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width``×``height`` but holds one empty IDAT: a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def _noise_png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (256, 256), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


def _corrupt_png() -> bytes:
    data = bytearray(_noise_png())
    data[200:260] = bytes(60)  # zero a run inside the compressed pixel data
    return bytes(data)


def _gray(side: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.full(side[::-1], 128, np.uint8))


@dataclass(frozen=True)
class BadInput:
    """One refused upload: its file name, how to build its bytes, and the expected message."""

    name: str
    build: Callable[[], bytes]
    message: str  # regular expression the error must match


BAD_INPUTS: tuple[BadInput, ...] = (
    BadInput("empty.png", lambda: b"", r"empty \(0 bytes\)"),
    BadInput("notes.png", lambda: b"patient notes, not an image\n" * 20, "not a readable image"),
    BadInput("random.jpg", lambda: np.random.default_rng(1).bytes(5000), "not a readable image"),
    BadInput("report.png", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" * 40, "not a readable image"),
    BadInput("archive.jpg", lambda: b"PK\x03\x04" + bytes(2000), "not a readable image"),
    BadInput("cut.png", lambda: _noise_png()[:3000], "truncated or corrupt"),
    BadInput(
        "cut.jpg",
        lambda: encode(Image.fromarray(ramp(256, 256)), "JPEG")[:1500],
        "truncated or corrupt",
    ),
    BadInput("corrupt.png", _corrupt_png, "truncated or corrupt"),
    BadInput("tiny.png", lambda: encode(_gray((32, 32)), "PNG"), "too small.*64 px"),
    BadInput("strip.bmp", lambda: encode(_gray((2000, 40)), "BMP"), "too small.*64 px"),
    BadInput("big.png", lambda: png_header_only(8000, 7000), "56 MP.*over 50 MP are refused"),
    BadInput("bomb.png", lambda: png_header_only(30000, 30000), "more pixels than LungCAM opens"),
    BadInput("text.dcm", lambda: b"not a dicom file\n" * 50, "not a readable DICOM file"),
    BadInput("ct.dcm", lambda: make_dicom(ramp(), modality="CT"), "'CT' is not a radiograph"),
    BadInput("report.dcm", lambda: make_dicom(None, modality="SR"), "'SR' is not a radiograph"),
    BadInput("nopixels.dcm", lambda: make_dicom(None), "no pixel data"),
    BadInput("cut.dcm", lambda: make_dicom(ramp(256, 256))[:-20000], "pixel data"),
    BadInput("IM0001", lambda: make_dicom(ramp(32, 32)), "too small"),
)


def write_bad_inputs(folder: str | Path) -> list[tuple[Path, str]]:
    """Write every ``BAD_INPUTS`` file into ``folder``; returns (path, expected message regex)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for case in BAD_INPUTS:
        path = out / case.name
        path.write_bytes(case.build())
        written.append((path, case.message))
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/bad_inputs.py OUT_DIR")
    cases = write_bad_inputs(sys.argv[1])
    lines = [f"{path.name}\t{message}" for path, message in cases]
    (Path(sys.argv[1]) / "expected.tsv").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(cases)} bad inputs to {sys.argv[1]}")
