"""Synthetic DICOM with burned-in text, for the pixels tests and the benchmark.

Frames are drawn with several fonts (Pillow's bitmap default font, Pillow's scalable Aileron,
OpenCV's Hershey faces), sizes, colours and positions on ultrasound-like speckle or flat
backgrounds. Alongside each frame comes the exact mask of text pixels so tests can measure how
much text survives redaction.
"""

from __future__ import annotations

import copy
import io
import re
from dataclasses import dataclass

import cv2
import numpy as np
import pydicom
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"

HERSHEY = {
    "hershey-simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "hershey-duplex": cv2.FONT_HERSHEY_DUPLEX,
    "hershey-complex": cv2.FONT_HERSHEY_COMPLEX,
    "hershey-plain": cv2.FONT_HERSHEY_PLAIN,
}


@dataclass(frozen=True)
class TextSpec:
    text: str
    x: int
    y: int
    font: str = "aileron"  # "pil-bitmap", "aileron", or a HERSHEY key
    size: int = 18  # pixel height for aileron; scale*10 for hershey
    color: tuple[int, int, int] = (255, 255, 255)


# Identifying-looking captions in the places devices put them: header bar, corners, inside image.
DEFAULT_TEXTS = (
    TextSpec("DOE JANE", 8, 6, "aileron", 20, (255, 255, 255)),
    TextSpec("DOB 1961-03-02", 250, 6, "hershey-simplex", 6, (255, 255, 0)),
    TextSpec("MRN 00471139", 8, 40, "pil-bitmap", 11, (0, 255, 0)),
    TextSpec("ELSEWHERE HOSPITAL", 360, 440, "hershey-duplex", 5, (0, 255, 255)),
    TextSpec("ACC 120907058", 8, 448, "aileron", 14, (200, 200, 200)),
    TextSpec("SMITH", 300, 250, "hershey-complex", 8, (255, 255, 255)),
)

FLAT_TEXTS = (
    TextSpec("DOE JANE", 8, 6, "aileron", 20, (0, 0, 0)),
    TextSpec("DOB 1961-03-02", 250, 6, "hershey-simplex", 6, (0, 0, 160)),
    TextSpec("MRN 00471139", 8, 40, "pil-bitmap", 11, (0, 0, 0)),
    TextSpec("ELSEWHERE HOSPITAL", 360, 440, "hershey-duplex", 5, (120, 0, 0)),
    TextSpec("ACC 120907058", 8, 448, "aileron", 14, (40, 40, 40)),
    TextSpec("SMITH", 300, 250, "hershey-complex", 8, (0, 90, 0)),
)


def words_of(texts: tuple[TextSpec, ...]) -> set[str]:
    """The alphanumeric tokens of >= 3 characters an OCR must not read after redaction."""
    words: set[str] = set()
    for spec in texts:
        words.update(w for w in re.split(r"[^A-Z0-9]+", spec.text.upper()) if len(w) >= 3)
    return words


def _pil_font(spec: TextSpec) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    if spec.font == "pil-bitmap":
        return ImageFont.load_default()  # the classic 11 px bitmap font
    return ImageFont.load_default(size=spec.size)  # Aileron, scalable (Pillow >= 10.1)


def draw_text(image: np.ndarray, mask: np.ndarray, spec: TextSpec) -> None:
    """Draw ``spec`` on ``image`` (rows, columns, 3) uint8 in place; mark its pixels in ``mask``."""
    if spec.font in HERSHEY:
        face, scale = HERSHEY[spec.font], spec.size / 10.0
        (_, height), _ = cv2.getTextSize(spec.text, face, scale, 1)
        origin = (spec.x, spec.y + height)  # cv2 anchors at the baseline
        thickness = 1 if spec.size < 7 else 2
        cv2.putText(image, spec.text, origin, face, scale, spec.color, thickness, cv2.LINE_AA)
        layer = np.zeros(mask.shape, dtype=np.uint8)
        cv2.putText(layer, spec.text, origin, face, scale, 255, thickness, cv2.LINE_AA)
    else:
        font = _pil_font(spec)
        picture = Image.fromarray(image)
        ImageDraw.Draw(picture).text((spec.x, spec.y), spec.text, font=font, fill=spec.color)
        image[...] = np.asarray(picture)
        layer_image = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
        ImageDraw.Draw(layer_image).text((spec.x, spec.y), spec.text, font=font, fill=255)
        layer = np.asarray(layer_image)
    # pixels at least 1/8 covered count as text: faint anti-aliasing fringes are not legible
    mask |= layer >= 32


def ultrasound_background(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A sector of Rayleigh speckle on black, like a B-mode fan; grey (rows, columns) uint8."""
    yy, xx = np.mgrid[0:rows, 0:columns]
    apex_x, apex_y = columns / 2, rows * 0.06
    radius = np.hypot(xx - apex_x, yy - apex_y)
    angle = np.degrees(np.arctan2(xx - apex_x, yy - apex_y))
    fan = (np.abs(angle) < 38) & (radius > rows * 0.08) & (radius < rows * 0.92)
    speckle = rng.rayleigh(45.0, size=(rows, columns))
    speckle = cv2.GaussianBlur(speckle, (3, 3), 0) * np.exp(-radius / (rows * 1.4))
    return np.where(fan, np.clip(speckle + 10, 0, 220), 0).astype(np.uint8)


def text_frames(
    number_of_frames: int = 1,
    rows: int = 480,
    columns: int = 640,
    background: str = "ultrasound",
    texts: tuple[TextSpec, ...] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, tuple[TextSpec, ...]]:
    """RGB frames (n, rows, columns, 3) with the same captions on every frame, and the text mask."""
    rng = np.random.default_rng(seed)
    if texts is None:
        texts = DEFAULT_TEXTS if background == "ultrasound" else FLAT_TEXTS
    frames = np.empty((number_of_frames, rows, columns, 3), dtype=np.uint8)
    mask = np.zeros((rows, columns), dtype=bool)
    for index in range(number_of_frames):
        if background == "ultrasound":
            grey = ultrasound_background(rows, columns, rng)
        else:
            grey = np.full((rows, columns), 205, dtype=np.uint8)
        frame = np.repeat(grey[:, :, None], 3, axis=2)
        frame_mask = np.zeros((rows, columns), dtype=bool)
        for spec in texts:
            draw_text(frame, frame_mask, spec)
        frames[index] = frame
        mask |= frame_mask
    return frames, mask, texts


def build_dataset(
    frames: np.ndarray,
    *,
    photometric: str = "RGB",
    modality: str = "US",
    sop_class: str | None = None,
    burned_in: str | None = None,
    multiframe: bool | None = None,
    bits_stored: int | None = None,
) -> Dataset:
    """A minimal valid instance in Explicit VR Little Endian around ``frames``."""
    multiframe = frames.shape[0] > 1 if multiframe is None else multiframe
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class or (US_MULTIFRAME if multiframe else US_IMAGE)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = modality
    ds.PatientName = "DOE^JANE"
    ds.Manufacturer = "ACME Imaging"
    ds.ManufacturerModelName = "SonoTest 9"
    if burned_in is not None:
        ds.BurnedInAnnotation = burned_in
    data = frames if multiframe else frames[0]
    bits = bits_stored or frames.dtype.itemsize * 8
    ds.set_pixel_data(data, photometric, bits, generate_instance_uid=False)
    return ds


def to_jpeg_baseline(ds: Dataset, quality: int = 92, subsampling: int = 1, **options: object) -> Dataset:
    """Re-encode an 8-bit native instance as JPEG Baseline (YBR_FULL_422 for colour) with Pillow.

    ``subsampling`` is Pillow's (0 4:4:4, 1 4:2:2, 2 4:2:0); ``options`` go to Pillow's JPEG writer
    (``optimize``, ``restart_marker_blocks``, ``progressive``, ...).
    """
    from pydicom.pixels import pixel_array

    frames = pixel_array(ds)
    count = int(ds.get("NumberOfFrames") or 1)
    if count == 1 and "NumberOfFrames" not in ds:
        frames = frames[None]
    colour = int(ds.SamplesPerPixel) == 3
    fragments = []
    for frame in frames:
        buffer = io.BytesIO()
        mode = "RGB" if colour else "L"
        # subsampling=1 is 4:2:2, matching YBR_FULL_422
        Image.fromarray(frame, mode).save(buffer, "JPEG", quality=quality, subsampling=subsampling, **options)
        fragments.append(buffer.getvalue())
    out = copy.deepcopy(ds)  # a shallow copy would share (and corrupt) the PixelData element
    out.PixelData = encapsulate(fragments)
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    out.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    if colour:
        out.PhotometricInterpretation = "YBR_FULL_422" if subsampling == 1 else "YBR_FULL"
    else:
        out.PhotometricInterpretation = "MONOCHROME2"
    return out


def to_syntax(ds: Dataset, tsyntax: str) -> Dataset:
    """A copy of a native instance in ``tsyntax`` (JPEG Baseline via Pillow, others via pydicom)."""
    if tsyntax == JPEGBaseline8Bit:
        return to_jpeg_baseline(ds)
    out = copy.deepcopy(ds)
    if tsyntax != ExplicitVRLittleEndian:
        out.compress(tsyntax, generate_instance_uid=False)
    return out


def roundtrip(ds: Dataset) -> Dataset:
    """Write and read back, as the pipeline does, so tests see what a file would hold."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))
