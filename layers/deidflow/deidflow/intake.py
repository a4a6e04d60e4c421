"""Reading an input and deciding whether it can be cleaned at all.

What we cannot clean we reject with a reason code and a sentence that names tags or sizes, never
header values. Nothing rejected produces output.
"""

from __future__ import annotations

import io
import logging
import mmap
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, BinaryIO

import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import UID

from .dicomraw.read import element_text, element_unsigned, elements_as_read, text_value
from .framing import DEFLATED, FileBytes, Framing, PixelFraming, check_framing, read_file_meta, same_tags
from .pixels.codestream import codestream_problem
from .rejection import Rejected
from .rules.model import MAX_FILE_BYTES
from .tags import PIXEL_DATA_KEYWORDS

# pydicom's value validation warnings quote the offending value: they must never reach a log.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
# Some of pydicom's other warnings quote values too; none of them may reach a terminal or a log.
warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\..*)?$")
# pydicom logs what it reads, and its decoders log their failures with tracebacks (to stderr, by
# logging's last resort, when nothing is configured): none of it may reach a terminal or a log.
logging.getLogger("pydicom").setLevel(logging.CRITICAL + 1)

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
ENCAPSULATED_DOCUMENT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.104.3": "Encapsulated STL",
    "1.2.840.10008.5.1.4.1.1.104.4": "Encapsulated OBJ",
    "1.2.840.10008.5.1.4.1.1.104.5": "Encapsulated MTL",
}
# SOP classes whose content is opaque by definition: nothing can say it holds no identity. Listed
# in the rules' accept.sop_classes, they are accepted (and de-identified like any other instance).
OPAQUE_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.66": "Raw Data"}
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
CODESTREAM_HEAD_BYTES = 4096  # what is read of each frame's codestream to check the size it declares


@dataclass(frozen=True)
class AcceptPolicy:
    max_file_bytes: int = MAX_FILE_BYTES
    extra_sop_classes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Instance:
    """A parsed input with the framing its bytes were checked against."""

    dataset: Dataset
    framing: Framing
    pixel_excess: int  # bytes of native Pixel Data beyond the declared geometry (to cut off)
    # The top-level elements as read: what values are checked against before they are kept, even
    # after the rules or the pixel policy have had pydicom decode some of them.
    originals: Mapping[BaseTag, Any]


def read_dataset(source: str | os.PathLike[str] | bytes, policy: AcceptPolicy = AcceptPolicy()) -> Dataset:
    """Parse a whole DICOM file (path or bytes) or raise Rejected."""
    return read_instance(source, policy).dataset


def read_instance(
    source: str | os.PathLike[str] | bytes, policy: AcceptPolicy = AcceptPolicy(), *, defer_above: int | None = None
) -> Instance:
    """Check a whole DICOM file's framing, then parse it, or raise Rejected.

    A file is mapped rather than read for the framing walk: its pages belong to the page cache,
    and pydicom then reads the values it keeps from the file itself. With `defer_above`, top-level
    values longer than that are not read at all (pydicom's deferred values, read from the file
    when asked for): a file's size then costs no memory until its pixels are needed.
    """
    if isinstance(source, bytes):
        _check_size(len(source), policy)
        framing = _framing(source, policy)
        return _checked(_parse(io.BytesIO(source)), framing, source)
    with open(source, "rb") as fh:
        _check_size(os.fstat(fh.fileno()).st_size, policy)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            framing = _framing(mapped, policy)
            # A deflated data set's values lie in the inflated stream, not at a place in the file.
            defer = defer_above if framing.transfer_syntax != DEFLATED else None
            return _checked(_parse(fh, defer), framing, mapped)


def _checked(ds: Dataset, framing: Framing, data: FileBytes) -> Instance:
    # pydicom must have read the top level the way the walk did, element for element.
    same_tags(list(ds.keys()), framing.dataset)
    originals = elements_as_read(ds)
    try:
        excess = check_complete(ds, framing, data)
    except Rejected:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged value fails when pydicom decodes it
        raise Rejected("unparseable", f"an element could not be read ({type(exc).__name__})") from None
    return Instance(ds, framing, excess, originals)


def _check_size(size: int, policy: AcceptPolicy) -> None:
    if size == 0:
        raise Rejected("empty_file", "the file is empty")
    if size > policy.max_file_bytes:
        raise Rejected("too_large", f"{size} bytes is over the {policy.max_file_bytes} byte limit")


# Reasons the file meta alone gives: they hold even for a file without a preamble.
_FROM_THE_FILE_META = frozenset({"dicomdir", "too_large", "unsupported_syntax"})


def _framing(data: FileBytes, policy: AcceptPolicy) -> Framing:
    has_preamble = len(data) >= 132 and data[128:132] == b"DICM"
    try:
        meta = read_file_meta(data)
        if meta.sop_class == DICOMDIR_CLASS:
            raise Rejected("dicomdir", "a DICOMDIR is a media index, not an instance")
        if meta.transfer_syntax and not UID(meta.transfer_syntax).is_transfer_syntax:
            # Whatever its pixels are encoded as, nothing here (or at a researcher's) can read them.
            raise Rejected("unsupported_syntax", "the transfer syntax is not one the standard defines")
        return check_framing(data, max_inflated_bytes=policy.max_file_bytes, meta=meta)
    except Rejected as rejected:
        if has_preamble or data[:2] == b"\x02\x00" or rejected.reason in _FROM_THE_FILE_META:
            raise
        # No preamble and no file meta: whatever this is, it is not a data set we can read.
        raise Rejected("not_dicom", "no DICOM preamble and not a DICOM data set") from None


def _parse(fh: BinaryIO, defer_above: int | None = None) -> Dataset:
    try:
        return pydicom.dcmread(fh, defer_size=defer_above)
    except InvalidDicomError:
        pass  # no preamble: maybe a bare data set, as some modalities and old archives write
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on damaged files
        raise Rejected("unparseable", f"pydicom could not parse it ({type(exc).__name__})") from None
    fh.seek(0)
    try:
        ds = pydicom.dcmread(fh, force=True, defer_size=defer_above)
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


def check_complete(ds: Dataset, framing: Framing, data: FileBytes) -> int:
    """The framing walk has shown every element whole; what is left is what the header promises:
    an image has pixel data, and its pixel data is what the geometry declares. Returns how many
    bytes of native Pixel Data lie beyond that (trailing padding, to be cut off)."""
    if not any(k in ds for k in PIXEL_DATA_KEYWORDS):
        if "Image Storage" in UID(str(ds.get("SOPClassUID", ""))).name:
            raise Rejected("no_pixel_data", "an image storage instance without Pixel Data")
        return 0
    pixel = framing.pixel_data
    if "PixelData" in ds:
        check_pixel_module(ds)
    if pixel is None:
        for keyword, bytes_per_sample in (("FloatPixelData", 4), ("DoubleFloatPixelData", 8)):
            if keyword in ds and _check_native_length(ds, len(ds[keyword].value), bytes_per_sample * 8, keyword):
                raise Rejected("pixel_data_mismatch", f"{keyword} is longer than the header declares")
        return 0
    if pixel.encapsulated:
        _check_fragments(ds, pixel, data)
        return 0
    return _check_native_length(ds, pixel.length, None, "Pixel Data")


_SAMPLES_FOR_PHOTOMETRIC = {
    "MONOCHROME1": 1,
    "MONOCHROME2": 1,
    "PALETTE COLOR": 1,
    "RGB": 3,
    "YBR_FULL": 3,
    "YBR_FULL_422": 3,
    "YBR_PARTIAL_422": 3,
    "YBR_PARTIAL_420": 3,
    "YBR_ICT": 3,
    "YBR_RCT": 3,
}


def check_pixel_module(ds: Dataset) -> None:
    """The Image Pixel module describes pixels a reader can decode (PS3.3 C.7.6.3): what a lying
    attribute breaks is the researcher's copy, and a scan that looks at other pixels than a viewer."""
    *_, samples, bits = _geometry(ds)
    for tag, keyword in (
        (0x00280002, "Samples per Pixel"),
        (0x00280004, "Photometric Interpretation"),
        (0x00280101, "Bits Stored"),
        (0x00280102, "High Bit"),
        (0x00280103, "Pixel Representation"),
    ):
        if tag not in ds:  # Type 1 in the Image Pixel module: without it, readers guess
            raise Rejected("incomplete_image", f"Pixel Data without {keyword}")
    photometric = text_value(ds, "PhotometricInterpretation", "CS").strip()
    expected = _SAMPLES_FOR_PHOTOMETRIC.get(photometric)
    if expected is None:
        raise Rejected("invalid_image", "Photometric Interpretation is missing or not one this reads")
    if samples != expected:
        raise Rejected("invalid_image", f"{samples} samples per pixel for {photometric}")
    if bits not in (1, 8, 16, 32):
        raise Rejected("invalid_image", f"Pixel Data with {bits} Bits Allocated")
    stored = _optional_unsigned(ds, 0x00280101, "BitsStored")
    high = _optional_unsigned(ds, 0x00280102, "HighBit")
    representation = _optional_unsigned(ds, 0x00280103, "PixelRepresentation")
    planar = _optional_unsigned(ds, 0x00280006, "PlanarConfiguration")
    if stored is not None and not 1 <= stored <= bits:
        raise Rejected("invalid_image", f"{stored} Bits Stored in {bits} Bits Allocated")
    if high is not None and not (stored or 1) - 1 <= high < bits:
        raise Rejected("invalid_image", f"High Bit {high} outside {bits} Bits Allocated")
    if representation not in (None, 0, 1):
        raise Rejected("invalid_image", f"Pixel Representation {representation}")
    if samples == 3 and planar not in (None, 0, 1):
        raise Rejected("invalid_image", f"Planar Configuration {planar}")


def _optional_unsigned(ds: Dataset, tag: int, keyword: str) -> int | None:
    value = element_unsigned(ds, tag, "US")
    if value is not None:
        return value
    try:
        raw = ds.get(keyword)
        return None if raw in (None, "") else int(raw)
    except (TypeError, ValueError, OverflowError):
        raise Rejected("invalid_image", f"{keyword} cannot be read") from None


def _geometry(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(frames, rows, columns, samples per pixel, bits allocated), or Rejected when unusable."""
    values = []
    for tag, keyword, default in (
        (0x00280008, "NumberOfFrames", 1),
        (0x00280010, "Rows", None),
        (0x00280011, "Columns", None),
        (0x00280002, "SamplesPerPixel", 1),
        (0x00280100, "BitsAllocated", None),
    ):
        value = element_unsigned(ds, tag, "US")
        if value is None:
            try:
                raw = ds.get(keyword)
                value = default if raw in (None, "") and default is not None else int(raw)
            except (TypeError, ValueError, OverflowError):
                raise Rejected("incomplete_image", f"Pixel Data without a usable {keyword}") from None
        if value < 1:
            raise Rejected("incomplete_image", f"Pixel Data with {keyword} {value}")
        values.append(value)
    frames, rows, columns, samples, bits = values
    return frames, rows, columns, samples, bits


def decoded_pixel_bytes(ds: Dataset) -> int:
    """How many bytes the pixels take once decoded: what a pixel scan must hold in memory."""
    frames, rows, columns, samples, bits = _geometry(ds)
    return frames * rows * columns * samples * max(1, (bits + 7) // 8)


def _check_native_length(ds: Dataset, length: int, bits: int | None, what: str) -> int:
    """The number of bytes beyond what the geometry declares (0 when it matches), or Rejected."""
    frames, rows, columns, samples, bits_allocated = _geometry(ds)
    bits = bits or bits_allocated
    if bits not in (1, 8, 16, 32, 64):
        raise Rejected("incomplete_image", f"{what} with {bits} Bits Allocated")
    count = rows * columns * samples * frames
    if bits == 1:
        expected = (count + 7) // 8
    elif text_value(ds, "PhotometricInterpretation", "CS") == "YBR_FULL_422":
        expected = count * bits // 8 * 2 // 3
    else:
        expected = count * bits // 8
    padded = expected + expected % 2  # a value of odd length is padded to even (PS3.5 7.1.1)
    if length < expected:
        raise Rejected("truncated", f"{what} holds {length} bytes where the header declares {expected}")
    if length > padded and length - padded >= padded // frames:
        # A frame or more beyond the geometry: the geometry is wrong (a scan would read the wrong
        # pixels), so nothing can be said about what the image shows.
        raise Rejected("pixel_data_mismatch", f"{what} holds {length} bytes where the header declares {expected}")
    # Less than a frame of trailing padding, which some writers add: cut off on output.
    return length - padded if length > padded else 0


def _check_fragments(ds: Dataset, pixel: PixelFraming, data: FileBytes) -> None:
    """PS3.5 A.4: every frame starts a fragment of its own, so there are at least as many
    fragments as frames, and a Basic Offset Table, when filled, has one entry per frame, each at
    a fragment's start. Each frame's codestream then declares the size the header does."""
    frames, rows, columns, samples, bits = _geometry(ds)
    fragments = pixel.fragments
    if frames > len(fragments):
        raise Rejected(
            "pixel_data_mismatch", f"{frames} frames declared but the Pixel Data holds {len(fragments)} fragments"
        )
    table = pixel.offset_table
    first_fragments = [fragments[0]]
    if table:
        first = fragments[0][0] - 8
        by_start = {offset - 8 - first: (offset, length) for offset, length in fragments}
        if len(table) != frames or table[0] != 0 or any(b <= a for a, b in pairwise(table)):
            raise Rejected("pixel_data_mismatch", "the Basic Offset Table does not list one start per frame")
        if any(entry not in by_start for entry in table):
            raise Rejected("pixel_data_mismatch", "a Basic Offset Table entry points inside a fragment")
        first_fragments = [by_start[entry] for entry in table]
    elif len(fragments) == frames:
        first_fragments = list(fragments)
    elif frames > 1 and "ExtendedOffsetTable" not in ds:
        # Without an offset table, frames can only be told apart one fragment each.
        raise Rejected(
            "pixel_data_mismatch", f"{frames} frames in {len(fragments)} fragments and no offset table to find them"
        )
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    for index, (offset, length) in enumerate(first_fragments):
        head = data[offset : offset + min(length, CODESTREAM_HEAD_BYTES)]
        problem = codestream_problem(head, syntax, rows, columns, samples, bits)
        if problem:
            raise Rejected("pixel_data_mismatch", f"frame {index}: {problem}")


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
    if sop_class in OPAQUE_SOP_CLASSES and sop_class not in policy.extra_sop_classes:
        raise Rejected(
            "opaque_content",
            f"{OPAQUE_SOP_CLASSES[sop_class]} content is opaque by definition "
            "(accept it in the rules: accept.sop_classes)",
        )
    if sop_class not in policy.extra_sop_classes and UID(sop_class).type != "SOP Class":
        raise Rejected(
            "unknown_sop_class", "SOP Class UID is not a standard SOP class (allow it in the rules: accept.sop_classes)"
        )
