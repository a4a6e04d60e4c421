"""A de-identified header as one DynamoDB item: key and query attributes, plus the header as DICOM JSON.

Pure domain code: nothing here talks to AWS. The Index Lambda puts `IndexEntry.item` with boto3's
Table resource, so every value is a type its TypeSerializer accepts (str, int, bool, list, dict) —
never float. When the header is too large for an item, the DICOM JSON goes to a sidecar object whose
bytes `index_entry` returns for the caller to store; the item then names that object.

The input is already de-identified, but values are still never logged: errors name tags only.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import BYTES_VR

from .dicomraw.read import held
from .rules import ALL_LABEL

# DynamoDB rejects items over 400 KB. The default leaves room for the estimate's slack and for
# attributes a later version may add, so an item that passes here is always accepted.
DEFAULT_MAX_ITEM_BYTES = 350_000
# Binary values up to this many bytes stay inline (base64) in the DICOM JSON; larger ones are bulk
# data, left in the .dcm object. 1 KiB keeps small binary attributes (e.g. LUT descriptors) searchable.
DEFAULT_INLINE_BINARY_BYTES = 1024
SIDECAR_CONTENT_TYPE = "application/dicom+json"

# Bulk data however small: pixels, waveform samples, spectroscopy data and encapsulated documents
# belong to the object, not to a searchable header (and a small image is still an image).
_ALWAYS_BULK = frozenset(
    {
        0x7FE00008,  # Float Pixel Data
        0x7FE00009,  # Double Float Pixel Data
        0x7FE00010,  # Pixel Data
        0x54001010,  # Waveform Data
        0x56000020,  # Spectroscopy Data
        0x00420011,  # Encapsulated Document
    }
)
_OVERLAY_DATA_MASK, _OVERLAY_DATA = 0xFF00FFFF, 0x60003000  # (60xx,3000); the header pass removes them anyway

_MAX_KEY_BYTES = 1024
_INT32 = (-(2**31), 2**31 - 1)  # the range of an IS value
_IS = re.compile(r"^[+-]?\d+$")
# DA, plus the retired ACR-NEMA "YYYY.MM.DD" some old files still carry.
_DA = re.compile(r"^(\d{4})\.?(\d{2})\.?(\d{2})$")
# Instances without a usable Instance Number sort after every numbered one: "u" > any digit.
_UNNUMBERED = "unnumbered"


@dataclass(frozen=True)
class FrameLocations:
    """Byte ranges of each frame in the stored object, so one frame is one ranged read.

    Native pixel data: every frame is `frame_length` bytes from `pixel_data_offset` on.
    Encapsulated: per frame, the (offset, length) of each fragment's bytes (items' headers left out).
    """

    pixel_data_offset: int
    frame_length: int = 0
    fragments: tuple[tuple[tuple[int, int], ...], ...] = ()

    @property
    def encapsulated(self) -> bool:
        return bool(self.fragments)

    def ranges(self, frame_number: int, number_of_frames: int) -> tuple[tuple[int, int], ...]:
        """The (offset, length) ranges of frame `frame_number` (1-based); IndexError outside."""
        if frame_number < 1:
            raise IndexError(frame_number)
        if self.fragments:
            return self.fragments[frame_number - 1]
        if frame_number > number_of_frames:
            raise IndexError(frame_number)
        return ((self.pixel_data_offset + (frame_number - 1) * self.frame_length, self.frame_length),)

    def as_item(self) -> dict[str, Any]:
        # One JSON string: a long list of pairs as DynamoDB lists costs more bytes and converts
        # every number to Decimal.
        return {
            "frames": json.dumps(
                {"offset": self.pixel_data_offset, "length": self.frame_length, "fragments": self.fragments},
                separators=(",", ":"),
            )
        }

    @classmethod
    def from_item(cls, text: str) -> FrameLocations:
        data = json.loads(text)
        fragments = tuple(tuple((int(o), int(n)) for o, n in frame) for frame in data.get("fragments") or ())
        return cls(int(data["offset"]), int(data.get("length") or 0), fragments)


def frame_locations(path: str) -> FrameLocations | None:
    """Where each frame of Pixel Data sits in the file at `path`, or None when frames cannot be cut
    by byte ranges (deflated, bit-packed, or fragments that no table assigns to frames): a
    reader then decodes the object instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=1024)  # large values stay in the file
        raw = held(ds).get(0x7FE00010)
        transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if raw is None or transfer_syntax is None or transfer_syntax == DeflatedExplicitVRLittleEndian:
            return None
        offset = getattr(raw, "value_tell", None)
        frames = _integer(ds, "NumberOfFrames") or 1
        if offset is None or frames < 1:
            return None
        if not transfer_syntax.is_encapsulated:
            bits, rows, columns = (_integer(ds, k) or 0 for k in ("BitsAllocated", "Rows", "Columns"))
            samples = _integer(ds, "SamplesPerPixel") or 1
            length = rows * columns * samples * bits // 8
            if bits % 8 or length == 0 or int(getattr(raw, "length", 0)) < length * frames:
                return None
            return FrameLocations(int(offset), length)
    with open(path, "rb") as fh:
        fh.seek(int(offset))
        fragments = _fragment_items(fh)
    if fragments is None:
        return None
    table, items = fragments
    if table:
        starts = [*table, float("inf")]
        if len(table) != frames:
            return None
        first = items[0][0] - 8 if items else 0  # table offsets count from the first fragment's item tag
        grouped = tuple(
            tuple((o, n) for o, n in items if starts[i] <= o - 8 - first < starts[i + 1]) for i in range(frames)
        )
    elif frames == 1:
        grouped = (tuple(items),)
    elif len(items) == frames:
        grouped = tuple((item,) for item in items)
    else:
        return None
    if any(not frame for frame in grouped):
        return None
    return FrameLocations(int(offset), 0, grouped)


def _fragment_items(fh: Any) -> tuple[list[int], list[tuple[int, int]]] | None:
    """(Basic Offset Table, [(offset, length) of each fragment's bytes]) of encapsulated pixel data
    whose value starts at fh's position; None when the items are not as PS3.5 A.4 lays them out."""
    table: list[int] = []
    items: list[tuple[int, int]] = []
    first = True
    while True:
        head = fh.read(8)
        if len(head) < 8:
            return None
        group, element, length = (
            int.from_bytes(head[0:2], "little"),
            int.from_bytes(head[2:4], "little"),
            int.from_bytes(head[4:8], "little"),
        )
        if (group, element) == (0xFFFE, 0xE0DD):
            return table, items
        if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
            return None
        start = fh.tell()
        if first:
            body = fh.read(length)
            if len(body) != length or length % 4:
                return None
            table = [int.from_bytes(body[i : i + 4], "little") for i in range(0, length, 4)]
            first = False
            continue
        items.append((start, length))
        fh.seek(start + length)


@dataclass(frozen=True)
class IndexEntry:
    """What to put in the index table, and the sidecar bytes to store first when there are any."""

    item: dict[str, Any]
    sidecar: bytes | None = None  # DICOM JSON (UTF-8) to store at item["dicom_json_sidecar"]

    @property
    def sidecar_key(self) -> str | None:
        return self.item.get("dicom_json_sidecar")


SIDECAR_PREFIX = "headers/"


def default_sidecar_key(research_key: str) -> str:
    """headers/<the instance's key, .json for .dcm>: named after its instance, but outside studies/,
    which only the Publish step may write (the index step writes the index, never a research object)."""
    stem = research_key[: -len(".dcm")] if research_key.endswith(".dcm") else research_key
    return SIDECAR_PREFIX + stem + ".json"


def index_entry(
    ds: Dataset,
    research_key: str,
    *,
    labels: Iterable[str] = (),
    frames: FrameLocations | None = None,
    object_bytes: int | None = None,
    max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
    sidecar_key: str | None = None,
    inline_binary_bytes: int = DEFAULT_INLINE_BINARY_BYTES,
) -> IndexEntry:
    """The index item for one de-identified instance stored at `research_key`.

    `labels` are the rules' labels decided on the original header (stored as `rule_labels`, which
    the research API uses for permission profiles and never returns); `frames` where the frames sit
    in the stored object; `object_bytes` its size.

    Deterministic: the same dataset and arguments give an equal item and identical sidecar bytes, so
    a retried step overwrites the item with itself. Raises ValueError when the dataset has no SOP
    Instance UID (there is no key to index it under) or when even the item without its DICOM JSON
    would exceed `max_item_bytes`.
    """
    if not research_key:
        raise ValueError("research_key is required")
    # pydicom's validation warnings quote values; none of them may reach a log from here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item = query_attributes(ds)
        if "sop_instance_uid" not in item:
            raise ValueError("the dataset has no usable SOP Instance UID (0008,0018): nothing to key the item on")
        item["research_key"] = research_key
        if chosen := sorted(set(labels) - {ALL_LABEL}):
            item["rule_labels"] = chosen
        if frames is not None:
            item.update(frames.as_item())
        if object_bytes is not None:
            item["object_bytes"] = object_bytes
        header, bulk, invalid = dicom_json(ds, inline_binary_bytes=inline_binary_bytes)
    # Which elements the JSON leaves out, as distinct tags: bounded however many items repeat them,
    # and enough for a reader to know the header is not the whole object.
    if bulk:
        item["bulk_data_tags"] = sorted(bulk)
    if invalid:
        item["invalid_tags"] = sorted(invalid)

    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    item["dicom_json"] = text
    if item_size(item) <= max_item_bytes:
        return IndexEntry(item)
    del item["dicom_json"]
    item["dicom_json_sidecar"] = sidecar_key or default_sidecar_key(research_key)
    size = item_size(item)
    if size > max_item_bytes:
        raise ValueError(f"the index item is {size} bytes without its DICOM JSON (limit {max_item_bytes})")
    return IndexEntry(item, sidecar=text.encode("utf-8"))


def index_file(
    path: str | os.PathLike[str],
    research_key: str,
    *,
    labels: Iterable[str] = (),
    max_item_bytes: int = DEFAULT_MAX_ITEM_BYTES,
) -> IndexEntry:
    """`index_entry` for the stored object at `path`: read with large values left in the file (so
    Pixel Data is referenced, never read), with its frame locations and its size."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, defer_size=DEFAULT_INLINE_BINARY_BYTES)
    return index_entry(
        ds,
        research_key,
        labels=labels,
        frames=frame_locations(str(path)),
        object_bytes=os.path.getsize(path),
        max_item_bytes=max_item_bytes,
    )


def query_attributes(ds: Dataset) -> dict[str, Any]:
    """The top-level attributes that keys and GSIs are built from; absent when missing or unusable.

    Never an empty string: DynamoDB rejects "" as a key attribute value, and an absent GSI key
    simply leaves the item out of that (sparse) index.
    """
    item: dict[str, Any] = {}
    for name, keyword in _TEXT_ATTRIBUTES:
        value = _text(ds, keyword)
        # DynamoDB caps sort keys at 1024 bytes (partition keys at 2048) and these feed keys; only a
        # malformed value is that long (UIDs are 64 characters at most, LO 64), and the full value
        # is still in the DICOM JSON.
        if value and len(value.encode("utf-8")) <= _MAX_KEY_BYTES:
            item[name] = value
    if ts := _text(getattr(ds, "file_meta", None) or Dataset(), "TransferSyntaxUID"):
        item["transfer_syntax_uid"] = ts
    if study_date := _date(_text(ds, "StudyDate")):
        item["study_date"] = study_date
    for name, keyword, low in _INT_ATTRIBUTES:
        number = _integer(ds, keyword)
        if number is not None and number >= low:
            item[name] = number

    sop = item.get("sop_instance_uid")
    if sop:
        number = item.get("instance_number")
        # Zero-padded to IS's ten digits so that string order is numeric order; the SOP UID makes
        # the sort key unique, which keeps listings stable when instance numbers repeat.
        position = f"{number:010d}" if number is not None and number >= 0 else _UNNUMBERED
        item["instance_sort"] = f"{position}#{sop}"
        if series := item.get("series_instance_uid"):
            item["series_instance_sort"] = f"{series}#{item['instance_sort']}"
    return item


# (item attribute, DICOM keyword) for the string attributes copied as they are.
_TEXT_ATTRIBUTES = (
    ("sop_instance_uid", "SOPInstanceUID"),
    ("sop_class_uid", "SOPClassUID"),
    ("study_instance_uid", "StudyInstanceUID"),
    ("series_instance_uid", "SeriesInstanceUID"),
    ("patient_id", "PatientID"),
    ("modality", "Modality"),
    ("body_part_examined", "BodyPartExamined"),
    ("study_description", "StudyDescription"),
    ("series_description", "SeriesDescription"),
    ("manufacturer", "Manufacturer"),
    ("manufacturer_model_name", "ManufacturerModelName"),
)
# (item attribute, DICOM keyword, smallest meaningful value)
_INT_ATTRIBUTES = (
    ("series_number", "SeriesNumber", _INT32[0]),
    ("instance_number", "InstanceNumber", _INT32[0]),
    ("rows", "Rows", 1),
    ("columns", "Columns", 1),
    ("number_of_frames", "NumberOfFrames", 1),
)


def _element(ds: Dataset, keyword: str) -> DataElement | None:
    try:
        return ds.data_element(keyword)
    except Exception:  # noqa: BLE001 - a value that cannot be decoded is treated as absent
        return None


def _text(ds: Dataset, keyword: str) -> str | None:
    element = _element(ds, keyword)
    if element is None or element.VR == "SQ" or element.VR in BYTES_VR:
        return None
    value = element.value
    if value is None:
        return None
    # Multi-valued strings keep DICOM's own separator, so nothing is lost or invented.
    text = "\\".join(str(v) for v in value) if isinstance(value, MultiValue | list) else str(value)
    return text.strip(" \x00") or None


def _integer(ds: Dataset, keyword: str) -> int | None:
    element = _element(ds, keyword)
    if element is None or element.VM != 1:
        return None
    value = element.value
    if isinstance(value, int) and not isinstance(value, bool) and element.VR != "IS":
        return value  # US/UL/SS/SL: already an integer
    # IS: read the characters, not pydicom's conversion, so "3.5" or "abc" count as absent rather
    # than as a number someone guessed.
    text = str(value).strip(" \x00")
    if not _IS.match(text):
        return None
    number = int(text)
    return number if _INT32[0] <= number <= _INT32[1] else None


def _date(text: str | None) -> str | None:
    """YYYYMMDD when `text` is one valid calendar date; a range, a partial date or garbage is absent."""
    if not text:
        return None
    match = _DA.match(text)
    if not match:
        return None
    year, month, day = (int(g) for g in match.groups())
    try:
        date(year, month, day)
    except ValueError:
        return None
    return f"{year:04d}{month:02d}{day:02d}"


def dicom_json(
    ds: Dataset, *, inline_binary_bytes: int = DEFAULT_INLINE_BINARY_BYTES
) -> tuple[dict[str, Any], set[str], set[str]]:
    """PS3.18 F.2 DICOM JSON of the data set (not its file meta), without bulk data.

    Returns (json dict, tags left out as bulk data, tags left out because their value could not be
    encoded), tags as 8 hex digits. Built element by element rather than with Dataset.to_json_dict:
    that one either fails on the first undecodable element or (suppress_invalid_tags) logs the
    exception, whose text can quote the value.
    """
    bulk: set[str] = set()
    invalid: set[str] = set()
    return _json_dataset(ds, inline_binary_bytes, bulk, invalid), bulk, invalid


def _json_dataset(ds: Dataset, limit: int, bulk: set[str], invalid: set[str], where: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in ds.keys():  # keys(): iterating the Dataset itself would decode every raw value first
        key = f"{int(tag):08X}"
        raw = held(ds).get(tag)
        if type(raw) is RawDataElement and _raw_is_bulk(raw, limit):
            # Decided on the raw element: a value read with defer_size stays in the file.
            bulk.add(key)
            out[key] = {"vr": raw.VR or _dictionary_vr(int(tag)), "BulkDataURI": where + key}
            continue
        try:
            element = ds[tag]
        except Exception:  # noqa: BLE001
            invalid.add(key)
            continue
        if _is_bulk(element, limit):
            bulk.add(key)
            # PS3.18 F.2.6: a bulk value is replaced by a reference at its place. Stored as the
            # element's path in the instance (tags and item numbers joined by dots, so that it is one
            # URL path segment); the API makes it a URL when it answers.
            out[key] = {"vr": element.VR, "BulkDataURI": where + key}
            continue
        if element.VR == "SQ":
            items = [
                _json_dataset(item, limit, bulk, invalid, f"{where}{key}.{i}.")
                for i, item in enumerate(element.value or [])
            ]
            # PS3.18 F.2.5: an attribute without a value carries only its VR.
            out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            continue
        try:
            encoded = element.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=limit)
        except Exception:  # noqa: BLE001 - e.g. an IS or DS that is not a number
            invalid.add(key)
            continue
        if "Value" in encoded:
            encoded["Value"] = [_finite(v) for v in encoded["Value"]]
        out[key] = encoded
    return out


def _raw_is_bulk(raw: RawDataElement, limit: int) -> bool:
    tag = int(raw.tag)
    if tag in _ALWAYS_BULK or tag & _OVERLAY_DATA_MASK == _OVERLAY_DATA:
        return True
    vr = raw.VR or _dictionary_vr(tag)
    return vr in BYTES_VR and vr != "SQ" and raw.length != 0xFFFFFFFF and raw.length > limit


def _dictionary_vr(tag: int) -> str:
    # An implicit VR file names no VR: the dictionary's, with OW for "OB or OW" as PS3.5 A.1 reads it.
    try:
        vr = str(dictionary_VR(tag))
    except KeyError:
        return "UN"
    return "OW" if vr == "OB or OW" else vr.split(" or ")[0]


def _is_bulk(element: DataElement, limit: int) -> bool:
    tag = int(element.tag)
    if tag in _ALWAYS_BULK or tag & _OVERLAY_DATA_MASK == _OVERLAY_DATA:
        return True
    if element.VR not in BYTES_VR or element.VR == "SQ":
        return False
    value = element.value
    return isinstance(value, bytes | bytearray) and len(value) > limit


def _finite(value: Any) -> Any:
    # FL/FD may hold NaN or ±infinity, which JSON numbers cannot: written as strings, the
    # convention dicom-rs uses, so the text stays valid JSON.
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def item_size(item: Mapping[str, Any]) -> int:
    """An upper bound of the item's size as DynamoDB counts it (names + values, UTF-8).

    Generous on purpose: numbers count as their decimal text plus one byte (DynamoDB stores about
    half that), and lists and maps pay 3 bytes plus one per element, as DynamoDB documents.
    """
    return sum(len(name.encode("utf-8")) + _value_size(value) for name, value in item.items())


def _value_size(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, int):
        return len(str(value)) + 1
    if isinstance(value, Mapping):
        return 3 + sum(1 + len(str(k).encode("utf-8")) + _value_size(v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return 3 + sum(1 + _value_size(v) for v in value)
    # Decimal and anything else numeric-like: its text, like an int.
    return len(str(value)) + 1
