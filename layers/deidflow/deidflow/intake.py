"""Reading an input and deciding whether it can be cleaned at all.

What we cannot clean we reject with a reason code and a sentence that names tags or sizes, never
header values. Nothing rejected produces output.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from .rawvalues import element_text, element_unsigned, text_value
from .tagpattern import tag_text

# pydicom's value validation warnings quote the offending value: they must never reach a log.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
# Some of pydicom's other warnings quote values too; none of them may reach a terminal or a log.
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
ENCAPSULATED_DOCUMENT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
    "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ",
    "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL",
}
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
UNDEFINED_LENGTH = 0xFFFFFFFF
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class Rejected(Exception):
    """An input that produces no output. `reason` is a stable code, `detail` a PHI-free sentence."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AcceptPolicy:
    max_file_bytes: int = 2 * 1024**3
    extra_sop_classes: frozenset[str] = frozenset()


def read_dataset(source: str | os.PathLike[str] | bytes, policy: AcceptPolicy = AcceptPolicy()) -> Dataset:
    """Parse a whole DICOM file (path or bytes) or raise Rejected."""
    if isinstance(source, bytes):
        size = len(source)
        opener = lambda: io.BytesIO(source)  # noqa: E731
    else:
        path = Path(source)
        size = path.stat().st_size
        opener = lambda: path.open("rb")  # noqa: E731
    if size == 0:
        raise Rejected("empty_file", "the file is empty")
    if size > policy.max_file_bytes:
        raise Rejected("too_large", f"{size} bytes is over the {policy.max_file_bytes} byte limit")
    with opener() as fh:
        ds = _parse(fh)
    check_complete(ds)
    return ds


def _parse(fh: io.BufferedIOBase) -> Dataset:
    try:
        return pydicom.dcmread(fh)
    except InvalidDicomError:
        pass  # no preamble: maybe a bare dataset, as some modalities and old archives write
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise Rejected("unparseable", f"pydicom could not parse it ({type(exc).__name__})") from None
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, force=True)
        ds.get("SOPClassUID")
    except Exception:  # noqa: BLE001
        raise Rejected("not_dicom", "no DICOM preamble and not a DICOM data set") from None
    if not _has_uid(ds, "SOPClassUID") or not _has_uid(ds, "SOPInstanceUID"):
        raise Rejected("not_dicom", "no DICOM preamble and no SOP Class/Instance UID: not DICOM")
    return ds


def _has_uid(ds: Dataset, keyword: str) -> bool:
    plain = element_text(ds, tag_for_keyword(keyword) or 0, "UI")
    if plain is not None:
        return bool(plain.strip())
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001
        return False
    return isinstance(value, str) and bool(value.strip())


def check_complete(ds: Dataset) -> None:
    """pydicom reads truncated files quietly: a short last element, or no Pixel Data at all.

    Compare each element's declared length with what was read, and an image's pixel data with
    what Rows, Columns and friends promise.
    """
    tags = list(ds.keys())
    # Reading stops at the end of the file, so only the last element read can be short.
    for tag in tags[-1:]:
        raw = ds.get_item(tag)
        declared = getattr(raw, "length", None)
        if declared is None or declared == UNDEFINED_LENGTH or raw.value is None:
            continue
        if isinstance(raw.value, bytes) and len(raw.value) < declared:
            raise Rejected("truncated", f"element {tag_text(tag)} holds {len(raw.value)} of its {declared} bytes")
    if not any(k in ds for k in PIXEL_KEYWORDS):
        if "Image Storage" in UID(str(ds.get("SOPClassUID", ""))).name:
            raise Rejected("truncated", "an image without Pixel Data: the file was cut short")
        return
    if "PixelData" not in ds:
        return
    pixel = ds.get_item(0x7FE00010)
    value = pixel.value
    if getattr(pixel, "length", 0) == UNDEFINED_LENGTH or getattr(pixel, "is_undefined_length", False):
        _check_encapsulated(value)
        return
    try:
        expected = _native_pixel_bytes(ds)
    except (AttributeError, TypeError, ValueError):
        raise Rejected("unparseable", "Pixel Data without usable Rows/Columns/Bits Allocated") from None
    if len(value) < expected:
        raise Rejected("truncated", f"Pixel Data has {len(value)} of the {expected} bytes the header promises")


def _native_pixel_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    bits = _unsigned(ds, 0x00280100, "BitsAllocated")
    samples = element_unsigned(ds, 0x00280002, "US") or int(ds.get("SamplesPerPixel") or 1)
    count = _unsigned(ds, 0x00280010, "Rows") * _unsigned(ds, 0x00280011, "Columns") * samples * frames
    if bits == 1:
        return (count + 7) // 8
    if text_value(ds, "PhotometricInterpretation", "CS") == "YBR_FULL_422":
        return count * bits // 8 * 2 // 3
    return count * bits // 8


def _unsigned(ds: Dataset, tag: int, keyword: str) -> int:
    """`int(ds.<keyword>)` for a required US element."""
    value = element_unsigned(ds, tag, "US")
    return int(getattr(ds, keyword)) if value is None else value


def _check_encapsulated(value: bytes) -> None:
    """Walk the item headers: every fragment must be whole (PS3.5 A.4)."""
    offset = 0
    items = 0
    while offset + 8 <= len(value):
        group, element, length = struct.unpack_from("<HHL", value, offset)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            raise Rejected("truncated", "encapsulated Pixel Data has a damaged item header")
        if offset + 8 + length > len(value):
            raise Rejected("truncated", "encapsulated Pixel Data ends inside a fragment")
        offset += 8 + length
        items += 1
    if items < 2:  # the Basic Offset Table item plus at least one fragment
        raise Rejected("truncated", "encapsulated Pixel Data has no fragments")


def check_cleanable(ds: Dataset, policy: AcceptPolicy = AcceptPolicy()) -> None:
    """Reject the kinds of instance we cannot make safe."""
    meta_class = str(getattr(ds, "file_meta", Dataset()).get("MediaStorageSOPClassUID", ""))
    if meta_class == DICOMDIR_CLASS or "DirectoryRecordSequence" in ds:
        raise Rejected("dicomdir", "a DICOMDIR is a media index, not an instance")
    missing = [k for k in REQUIRED_UIDS if not _has_uid(ds, k)]
    if missing:
        raise Rejected("missing_uids", "no " + ", ".join(missing))
    sop_class = text_value(ds, "SOPClassUID", "UI").strip()
    if sop_class in ENCAPSULATED_DOCUMENT_CLASSES:
        raise Rejected(
            "encapsulated_document", f"{ENCAPSULATED_DOCUMENT_CLASSES[sop_class]} content cannot be de-identified"
        )
    if "EncapsulatedDocument" in ds:
        raise Rejected("encapsulated_document", "Encapsulated Document (0042,0011) cannot be de-identified")
    if sop_class not in policy.extra_sop_classes and UID(sop_class).type != "SOP Class":
        raise Rejected(
            "unknown_sop_class", "SOP Class UID is not a standard SOP class (allow it in the rules: accept.sop_classes)"
        )
