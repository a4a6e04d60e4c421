"""Encode a de-identified dataset as a DICOM file: the bytes `pydicom.dcmwrite` writes, faster.

Why: after the pass almost every element is still a RawDataElement, which pydicom writes as it
was read, yet its writer still pays ~10 µs per element (a scratch buffer, endianness lookups, an
exception context) and copies Pixel Data three times; that was the largest cost of the
`deidflow deid` path. Here raw elements become header + value by struct packing, sequences are
walked the same way, and every other element, and every data set whose encoding or character set
would make pydicom re-encode it, is handed to pydicom's own writer functions. So the output is
byte for byte what `dcmwrite(buffer, ds, enforce_file_format=True)` writes (tests compare the two
on every file they have), and files this path does not cover go through `dcmwrite` itself.

Covered: file meta that needs nothing added but the group length, and a data set in a public
explicit VR little endian transfer syntax, native or encapsulated, except deflated.
"""

from __future__ import annotations

import collections.abc
import io
import struct
from collections.abc import Mapping
from copy import copy
from typing import cast

import pydicom
from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from ..parts import Part, SourceSpan
from ..tags import BINARY_VRS, LONG_LENGTH_VRS, PIXEL_DATA, UNDEFINED_LENGTH

_PACK_SHORT = struct.Struct("<HH2sH").pack  # tag, VR, 16-bit length
_PACK_LONG = struct.Struct("<HH2sxxL").pack  # tag, VR, 2 reserved bytes, 32-bit length
_PACK_ITEM = struct.Struct("<HHL").pack  # item / delimiter tags with their 32-bit length
_ITEM_DELIMITER = _PACK_ITEM(0xFFFE, 0xE00D, 0)
_SEQUENCE_DELIMITER = _PACK_ITEM(0xFFFE, 0xE0DD, 0)
_EXPLICIT_LE = (False, True)  # (implicit VR, little endian) as pydicom spells an encoding


def encode_file(ds: Dataset) -> bytes:
    """`ds` as a DICOM file (preamble, DICM, file meta, data set), identical to what
    `pydicom.dcmwrite(buffer, ds, enforce_file_format=True)` writes, with the same changes to `ds`
    (Pixel Data decoded into a DataElement and its undefined-length flag set to the syntax's)."""
    return b"".join(encode_file_parts(ds))


def encode_file_parts(ds: Dataset) -> list[bytes]:
    """`encode_file(ds)` as the byte strings it joins. A file writer writes them as they are:
    joining would copy Pixel Data once more into freshly allocated memory, which costs more than
    the copy itself (page faults) and was a tenth of the `deidflow deid` time per CT slice."""
    return cast("list[bytes]", encode_file_spans(ds, None))


def encode_file_spans(ds: Dataset, encapsulated_lengths: Mapping[int, int] | None) -> list[Part]:
    """`encode_file_parts(ds)`, where binary values pydicom left in the source file (read with
    `defer_size`) stay there: each is a SourceSpan of the source in the output's place of its bytes.

    `encapsulated_lengths` gives, by where its value starts in the file, the length of an
    encapsulated Pixel Data value (its items, without the sequence delimiter), which pydicom does
    not keep; None reads every deferred value instead, as pydicom's writer does."""
    meta = getattr(ds, "file_meta", None)
    preamble = getattr(ds, "preamble", None)
    if not _covered(ds, meta, preamble):
        return [dcmwrite_bytes(ds)]
    assert meta is not None  # _covered checked it
    # dcmwrite works on a deep copy of the file meta, so that the data set's own is left as it
    # was; a shallow one will do, as no element of it is changed in place (see _file_meta_bytes).
    file_meta = copy(meta)
    file_meta._dict = dict(meta._dict)
    syntax = file_meta.get("TransferSyntaxUID", None)
    if not isinstance(syntax, UID) or syntax.is_private or not syntax.is_transfer_syntax:
        return [dcmwrite_bytes(ds)]
    if syntax.is_implicit_VR or not syntax.is_little_endian or syntax.is_deflated:
        return [dcmwrite_bytes(ds)]
    pixel_data = ds._dict.get(BaseTag(PIXEL_DATA))
    if pixel_data is not None and not _deferred(pixel_data, encapsulated_lengths):
        ds["PixelData"].is_undefined_length = syntax.is_compressed
    # (A deferred one is written as it was framed: the framing walk has shown it is encapsulated
    # exactly when the transfer syntax is.)
    try:
        meta_bytes = _file_meta_bytes(ds, file_meta)
        writer = _Writer(encapsulated_lengths)
        writer.dataset(ds, default_encoding)
    except _NotCovered:
        return [dcmwrite_bytes(ds)]
    return [preamble or b"\x00" * 128, b"DICM", meta_bytes, *writer.parts]


def _deferred(elem: object, encapsulated_lengths: Mapping[int, int] | None) -> bool:
    """A binary value pydicom left in the file, which the writer names as a span of it."""
    if encapsulated_lengths is None or not isinstance(elem, RawDataElement):
        return False
    raw = elem
    if raw.value is not None or not raw.length or raw.VR not in BINARY_VRS or raw.VR == "UN":
        return False  # (a UN value is its tag's VR, text as like as not: the pass reads and judges it)
    return raw.length != UNDEFINED_LENGTH or (raw.tag == PIXEL_DATA and raw.value_tell in encapsulated_lengths)


def dcmwrite_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _covered(ds: Dataset, meta: object, preamble: object) -> bool:
    """The cases dcmwrite rejects or completes are left to it: no file meta, a bad preamble,
    command or file meta elements in the data set, elements of other groups in the file meta, or
    no File Meta Information Version, Implementation Class UID or Implementation Version Name in it
    (validate_file_meta adds those)."""
    if not isinstance(meta, FileMetaDataset):
        return False
    if preamble is not None and (not isinstance(preamble, bytes) or len(preamble) != 128):
        return False
    if any(tag >> 16 in (0, 2) for tag in ds._dict):
        return False
    if any(tag not in meta._dict for tag in (0x00020001, 0x00020012, 0x00020013)):
        return False
    return all(tag >> 16 == 2 for tag in meta._dict)


class _NotCovered(Exception):
    """Raised before anything is returned when dcmwrite must handle the file after all."""


def _file_meta_bytes(ds: Dataset, file_meta: FileMetaDataset) -> bytes:
    """dcmwrite's file meta step (write_file_meta_info after validate_file_meta) on the shallow
    copy, which it changes only by adding or replacing elements, never an element in place."""
    # As dcmwrite: the Media Storage UIDs follow the data set's when it has them.
    for meta_tag, keyword in ((0x00020002, "SOPClassUID"), (0x00020003, "SOPInstanceUID")):
        element = file_meta.get(meta_tag, None)
        current = element.value if element is not None else None
        wanted = ds.get(keyword, None)
        if current is None or (wanted and wanted != current):
            if element is None:
                element = DataElement(meta_tag, "UI", wanted)
            else:
                element = copy(element)  # dcmwrite sets the value of its own (deep) copy
                element.value = wanted
            file_meta[meta_tag] = element
    # As validate_file_meta: these are filled in when empty, those must not be (dcmwrite raises).
    if file_meta[0x00020001].is_empty or file_meta[0x00020012].is_empty:
        raise _NotCovered
    if any(tag not in file_meta or file_meta[tag].is_empty for tag in (0x00020002, 0x00020003, 0x00020010)):
        raise _NotCovered
    if 0x00020000 in file_meta._dict:
        # Rewritten with the new length, in 12 bytes: as long as it is a UL.
        if file_meta.get_item(0x00020000).VR != "UL":
            raise _NotCovered
        del file_meta._dict[BaseTag(0x00020000)]
    writer = _Writer()
    length = writer.dataset(file_meta, default_encoding)
    # (0002,0000) File Meta Information Group Length, UL, first.
    return b"".join([_PACK_SHORT(0x0002, 0x0000, b"UL", 4), _PACK_UL(length), *cast("list[bytes]", writer.parts)])


# Values common after the pass (UIDs, code strings, dates, numbers read by intake's checks, the
# markers) encoded as pydicom's write_string, write_UI, write_DA/DT/TM (given a str), write_text
# (given ASCII and a character set that encodes ASCII as itself) and write_numbers encode them.
_STRING_PADDING = {"AE": b" ", "AS": b" ", "CS": b" ", "DA": b" ", "DT": b" ", "TM": b" ", "UR": b" ", "UI": b"\0"}
_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT"})
_ASCII_ENCODINGS = frozenset({"iso8859", "latin_1", "iso8859_2", "iso8859_3", "iso8859_4", "UTF8"})
_NUMBER_FORMATS = {
    "US": struct.Struct("<H").pack,
    "UL": struct.Struct("<L").pack,
    "SS": struct.Struct("<h").pack,
    "SL": struct.Struct("<l").pack,
    "FL": struct.Struct("<f").pack,
    "FD": struct.Struct("<d").pack,
}
_PACK_UL = _NUMBER_FORMATS["UL"]


def _simple_value(vr: str, value: object, ascii_text: bool) -> bytes | None:
    """The encoded value of ASCII strings or a single number, or None to let pydicom do it (other
    types, non-ASCII text, values too long for a 16-bit length, out-of-range numbers)."""
    kind = type(value)
    if kind is int or kind is float:
        pack = _NUMBER_FORMATS.get(vr)
        if pack is None or (kind is float and vr not in ("FL", "FD")):
            return None
        try:
            return pack(value)
        except (struct.error, OverflowError):
            return None
    padding = _STRING_PADDING.get(vr)
    if padding is None:
        if vr not in _TEXT_VRS or not ascii_text:
            return None
        padding = b" "
    if kind is str or kind is UID:
        text: str = value  # type: ignore[assignment]
    elif kind is MultiValue and value and all(type(v) is str or type(v) is UID for v in value):  # type: ignore[attr-defined]
        text = "\\".join(value)  # type: ignore[arg-type]
    else:
        return None
    if not text.isascii() or len(text) > 0xFFFE:
        return None
    data = text.encode("ascii")
    return data + padding if len(data) % 2 else data


class _Writer:
    """Explicit VR little endian encoding into a list of byte strings, which the file is written from."""

    def __init__(self, encapsulated_lengths: Mapping[int, int] | None = None) -> None:
        self.parts: list[Part] = []
        self.encapsulated_lengths = encapsulated_lengths
        self._buffer = io.BytesIO()
        self._scratch = DicomIO(self._buffer)  # reused: setting its endianness builds 6 Structs
        self._scratch.is_little_endian = True
        self._scratch.is_implicit_VR = False
        self._ascii_text: dict[object, bool] = {}

    def _is_ascii_charset(self, encoding: str | collections.abc.Sequence[str] | None) -> bool:
        key: object = encoding if encoding is None or isinstance(encoding, str) else tuple(encoding)
        known = self._ascii_text.get(key)
        if known is None:
            charsets: str | list[str] = (
                (encoding if isinstance(encoding, str) else list(encoding)) if encoding else [default_encoding]
            )
            known = self._ascii_text[key] = convert_encodings(charsets)[0] in _ASCII_ENCODINGS
        return known

    def dataset(self, ds: Dataset, parent_encoding: str | list[str]) -> int:
        """pydicom's write_dataset: append one data set's elements, return how many bytes."""
        parts = self.parts
        elements = ds._dict
        if ds.original_encoding != _EXPLICIT_LE or ds.original_character_set != ds._character_set:
            # As pydicom: ambiguous VRs resolved, and every element decoded and encoded anew.
            ds = correct_ambiguous_vr(ds, True)
            elements = {tag: ds[tag] for tag in ds._dict}
        encoding = ds.get("SpecificCharacterSet", parent_encoding)
        ascii_text: bool | None = None
        size = 0
        for tag in sorted(ds._dict, key=int):  # Tag.__lt__ is Python: thrice as slow
            if tag & 0xFFFF == 0 and tag >> 16 > 6:
                continue  # dcmwrite never writes retired group lengths
            elem = elements[tag]
            kind = type(elem)
            if kind is RawDataElement and elem.value is None:
                if _deferred(elem, self.encapsulated_lengths):
                    size += self._span(cast(RawDataElement, elem))
                    continue
                elem = ds.get_item(tag)  # a deferred value: read it, as pydicom's writer does
                kind = type(elem)
            if kind is RawDataElement:
                raw = cast(RawDataElement, elem)
                raw_vr, value = raw.VR, raw.value
                if raw_vr is not None and type(value) is bytes:
                    length = len(value)
                    if raw_vr in LONG_LENGTH_VRS:
                        undefined = raw.length == UNDEFINED_LENGTH
                        declared = UNDEFINED_LENGTH if undefined else length
                        parts.append(_PACK_LONG(tag >> 16, tag & 0xFFFF, raw_vr.encode(), declared))
                        parts.append(value)
                        size += 12 + length
                        if undefined:
                            if tag == 0x7FE00010:
                                raise _NotCovered  # dcmwrite decodes Pixel Data first: never raw here
                            parts.append(_SEQUENCE_DELIMITER)
                            size += 8
                        continue
                    if length <= 0xFFFF and len(raw_vr) == 2 and raw.length != UNDEFINED_LENGTH:
                        parts.append(_PACK_SHORT(tag >> 16, tag & 0xFFFF, raw_vr.encode(), length))
                        parts.append(value)
                        size += 8 + length
                        continue
            elif kind is DataElement and not cast(DataElement, elem).is_buffered:
                element = cast(DataElement, elem)
                vr, value = element.VR, element.value
                if vr == "SQ":
                    size += self._sequence(tag, element, encoding)
                    continue
                if (
                    vr in ("OB", "OW")
                    and type(value) is bytes
                    and len(value) % 2 == 0
                    and not element.is_undefined_length
                ):
                    # Native Pixel Data and friends: no scratch buffer, no copies.
                    parts.append(_PACK_LONG(tag >> 16, tag & 0xFFFF, vr.encode(), len(value)))
                    parts.append(value)
                    size += 12 + len(value)
                    continue
                if vr in _TEXT_VRS and ascii_text is None:
                    ascii_text = self._is_ascii_charset(encoding)
                data = _simple_value(vr, value, bool(ascii_text))
                if data is not None:
                    parts.append(_PACK_SHORT(tag >> 16, tag & 0xFFFF, vr.encode(), len(data)))
                    parts.append(data)
                    size += 8 + len(data)
                    continue
            size += self._delegate_element(elem, encoding)
        return size

    def _span(self, raw: RawDataElement) -> int:
        """A deferred binary value: its header, then its bytes as a span of the source file."""
        tag, vr = raw.tag, cast(str, raw.VR)
        if raw.length == UNDEFINED_LENGTH:
            assert self.encapsulated_lengths is not None  # _deferred checked it
            length = self.encapsulated_lengths[raw.value_tell]
            self.parts += [
                _PACK_LONG(tag >> 16, tag & 0xFFFF, vr.encode(), UNDEFINED_LENGTH),
                SourceSpan(raw.value_tell, length),
                _SEQUENCE_DELIMITER,
            ]
            return 12 + length + 8
        self.parts += [
            _PACK_LONG(tag >> 16, tag & 0xFFFF, vr.encode(), raw.length),
            SourceSpan(raw.value_tell, raw.length),
        ]
        return 12 + raw.length

    def _sequence(self, tag: int, elem: DataElement, encoding: str | list[str]) -> int:
        """write_data_element + write_sequence + write_sequence_item for one SQ element."""
        undefined = elem.is_undefined_length
        header = len(self.parts)
        self.parts.append(b"")  # the element header, once the length is known
        size = 0
        items: Sequence = elem.value
        if items:
            encodings = convert_encodings(encoding or [default_encoding])
            for item in items:
                at = len(self.parts)
                self.parts.append(b"")
                length = self.dataset(item, encodings)
                if getattr(item, "is_undefined_length_sequence_item", False):
                    self.parts[at] = _PACK_ITEM(0xFFFE, 0xE000, UNDEFINED_LENGTH)
                    self.parts.append(_ITEM_DELIMITER)
                    length += 8
                else:
                    self.parts[at] = _PACK_ITEM(0xFFFE, 0xE000, length)
                size += 8 + length
        self.parts[header] = _PACK_LONG(tag >> 16, tag & 0xFFFF, b"SQ", UNDEFINED_LENGTH if undefined else size)
        if undefined:
            self.parts.append(_SEQUENCE_DELIMITER)
            size += 8
        return 12 + size

    def _delegate_element(self, elem: DataElement | RawDataElement, encoding: str | list[str]) -> int:
        self._buffer.seek(0)
        self._buffer.truncate()
        write_data_element(self._scratch, elem, encoding)
        data = self._buffer.getvalue()
        self.parts.append(data)
        return len(data)
