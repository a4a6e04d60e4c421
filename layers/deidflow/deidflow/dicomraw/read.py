"""A few header values read straight from a raw element's bytes, as pydicom would decode them.

Why: pydicom decodes a value through its converters and character-set machinery (~10-20 µs an
element), and the checks and pseudonyms that run on every instance need only a handful of short
values. Each reader here handles the plain cases, returning exactly what pydicom would give, and
returns None for anything else (implicit VR, other VRs, values already decoded, non-ASCII or
multi-valued text), so that the caller asks pydicom instead. A test compares them with pydicom on
every element of every real file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import cast

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

# Text VRs whose single value pydicom decodes (with the character set, or as ASCII) and strips of
# trailing spaces and NULs.
PLAIN_TEXT_VRS = frozenset({"AE", "CS", "LO", "SH", "PN", "ST", "LT", "UT", "UC", "UI"})
_NOT_PLAIN = re.compile(rb"[^\x20-\x5b\x5d-\x7e]")  # anything but printable ASCII, or a backslash
_UNSIGNED_SIZES = {"US": 2, "UL": 4}


def plain_text(data: bytes) -> str | None:
    """A single text value as pydicom decodes it, when its bytes, once trailing padding is gone,
    are printable ASCII without a backslash: every DICOM character set decodes those as ASCII, and
    there is only one value. None when pydicom must decode it."""
    stripped = data.rstrip(b"\0 ")
    if _NOT_PLAIN.search(stripped) is not None:
        return None
    return stripped.decode("ascii")


def held(ds: Dataset) -> Mapping[int, DataElement | RawDataElement]:
    """The elements as the data set holds them, raw ones undecoded: a live view, for reading.
    (Its keys are pydicom tags, which are ints: looked up with plain ints, they hash alike.)"""
    return cast("Mapping[int, DataElement | RawDataElement]", ds._dict)


def _raw_bytes(ds: Dataset, tag: int, vr: str) -> tuple[RawDataElement, bytes] | None:
    """`ds`'s element `tag` and its bytes while it is still raw, explicit `vr` and read, else None."""
    raw = held(ds).get(tag)
    if type(raw) is not RawDataElement or vr != raw.VR or type(raw.value) is not bytes:
        return None
    return raw, raw.value


def element_text(ds: Dataset, tag: int, vr: str) -> str | None:
    """`str(ds[tag].value)` for a raw element of VR `vr` that `plain_text` can read, else None."""
    found = _raw_bytes(ds, tag, vr)
    return None if found is None else plain_text(found[1])


def text_value(ds: Dataset, keyword: str, vr: str) -> str:
    """`str(ds.get(keyword, "") or "")`, from the raw bytes when `element_text` can read them."""
    plain = element_text(ds, tag_for_keyword(keyword) or 0, vr)
    return str(ds.get(keyword, "") or "") if plain is None else plain


def element_unsigned(ds: Dataset, tag: int, vr: str) -> int | None:
    """`ds[tag].value` for a raw single-valued US or UL element of VR `vr`, else None."""
    found = _raw_bytes(ds, tag, vr)
    if found is None or len(found[1]) != _UNSIGNED_SIZES.get(vr):
        return None
    raw, data = found
    return int.from_bytes(data, "little" if raw.is_little_endian else "big")


def elements_as_read(ds: Dataset) -> dict[BaseTag, object]:
    """A copy of the top-level elements as read, before anything decodes them (decoding replaces
    a raw element in the data set by its decoded one)."""
    return dict(ds._dict)


def read_deferred(ds: Dataset, tag: int) -> RawDataElement:
    """The element `tag`, whose value pydicom left in the file (read with defer_size), read now and
    held raw, undecoded, as if it had been read with the rest (Dataset.get_item would decode it,
    and a kept value is checked on its bytes before it is written as them)."""
    elements = cast("dict[int, RawDataElement]", ds._dict)
    read = deferred_bytes(ds, elements[tag])
    elements[tag] = read
    return read


def deferred_bytes(ds: Dataset, raw: RawDataElement) -> RawDataElement:
    """`raw`, a value pydicom left in `ds`'s file, with its bytes read from there (nothing in `ds`
    changes)."""
    from pydicom.filereader import read_deferred_data_element

    source = ds.filename or ds.buffer
    if ds.filename and ds.buffer and not getattr(ds.buffer, "closed", False):
        source = ds.buffer  # as Dataset.__getitem__ chooses
    return read_deferred_data_element(ds.fileobj_type, source, ds.timestamp, raw)
