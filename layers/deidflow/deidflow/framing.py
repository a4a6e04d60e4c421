"""The framing of an encoded DICOM file, checked before any value in it is trusted.

pydicom reads damaged files quietly: a length that runs too long makes the elements that follow part
of one value; a stray item delimiter ends the data set early; a repeated tag replaces the first; a
short read at the end of the file leaves a short value; an unknown VR switches the reader to
implicit VR for one element. Each of these can carry a neighbour's identifiers into a value the
profile keeps, and a kept value is written out as the bytes it was read from. So the bytes are
walked here first, by the rules of PS3.5 and PS3.10, and anything that does not fit them is a
rejection with a reason:

- PS3.10 7.1: an optional 128-byte preamble and "DICM", then the File Meta group (0002) in explicit
  VR little endian.
- PS3.5 7.1: every element is a tag, a VR that exists (explicit VR), a length and a value that
  fits inside its parent; tags ascend strictly within each data set.
- PS3.5 7.5: sequences hold items only; an item of defined length ends exactly where its length
  says, one of undefined length at its item delimiter; delimiters carry length 0 and appear only
  where one is expected.
- PS3.5 A.4: encapsulated pixel data is a Basic Offset Table item and fragments, then a sequence
  delimiter, and only under an encapsulated transfer syntax (and native pixel data only under a
  native one).
- the file ends where its last element does.

Where pydicom accepts a variation that stays unambiguous, the walk accepts it the same way (a data
set or item written in implicit VR under an explicit transfer syntax; UN with undefined length,
whose items are implicit VR; a file without preamble or file meta), so that this reading and
pydicom's are the same reading. `same_tags` checks that they are, data set by data set.

Nothing here decodes a value, and no message names one: only tags, offsets and lengths.
"""

from __future__ import annotations

import mmap
import struct
import zlib
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pydicom.datadict import dictionary_VR
from pydicom.uid import UID
from pydicom.valuerep import VR

from .rejection import Rejected
from .tags import LONG_LENGTH_VRS, NATIVE_SYNTAXES, PIXEL_DATA, UNDEFINED_LENGTH, tag_text

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
MAX_DEPTH = 64  # sequences within sequences; SR content trees are the deepest real ones (~12)

_VALID_VRS = frozenset(str(vr).encode() for vr in VR)
_LONG_VRS = frozenset(vr.encode() for vr in LONG_LENGTH_VRS)
_SHORT_VRS = _VALID_VRS - _LONG_VRS
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


@dataclass(frozen=True)
class DatasetFrame:
    """The tags of one data set as they appear in the file, and the items of its sequences."""

    tags: array[int]  # unsigned: compared with pydicom's tags in one C-level step (see same_tags)
    items: Mapping[int, tuple[DatasetFrame, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class PixelFraming:
    """Where the top-level Pixel Data lies, and how it is framed.

    For encapsulated pixel data, `fragments` are (offset, length) of each fragment's bytes in the
    (inflated) data set stream, `offset_table` the Basic Offset Table's entries (empty when the
    table is empty).
    """

    offset: int
    length: int
    encapsulated: bool
    fragments: tuple[tuple[int, int], ...] = ()
    offset_table: tuple[int, ...] = ()


@dataclass(frozen=True)
class Framing:
    transfer_syntax: str  # as declared in the file meta ("" when there is none)
    dataset: DatasetFrame
    pixel_data: PixelFraming | None
    dataset_start: int  # where the data set begins (in the inflated stream for deflated files)


def malformed(detail: str) -> Rejected:
    return Rejected("malformed", detail)


def truncated(detail: str) -> Rejected:
    return Rejected("truncated", detail)


@dataclass(frozen=True)
class FileMeta:
    """What the File Meta group says about the data set that follows (PS3.10 7.1)."""

    end: int  # where the data set begins
    transfer_syntax: str  # "" when there is no file meta, or no Transfer Syntax UID in it
    sop_class: str  # Media Storage SOP Class UID, "" when absent


# A whole file in memory, or mapped: both slice and unpack alike.
FileBytes = bytes | mmap.mmap


def read_file_meta(data: FileBytes) -> FileMeta:
    """Walk the preamble (if any) and the File Meta group, or raise Rejected."""
    # Without a preamble: a bare data set, as some modalities and old archives write.
    return _file_meta(data, 132 if len(data) >= 132 and data[128:132] == b"DICM" else 0)


def check_framing(data: FileBytes, *, max_inflated_bytes: int, meta: FileMeta | None = None) -> Framing:
    """Walk `data` (a whole file) and return its framing, or raise Rejected."""
    meta = meta or read_file_meta(data)
    syntax = meta.transfer_syntax
    stream, start = data, meta.end
    if syntax == DEFLATED:
        stream, start = _inflate(data[meta.end :], max_inflated_bytes), 0
    explicit, little = _encoding(stream, start, syntax)
    walker = _Walker(stream, little, encapsulated=bool(syntax) and syntax not in NATIVE_SYNTAXES)
    frame, end = walker.dataset(start, len(stream), explicit, depth=0, top=True)
    if end != len(stream):
        raise malformed(f"{len(stream) - end} bytes after the last element")
    return Framing(syntax, frame, walker.pixel_data, start)


class PixelDataStart(NamedTuple):
    """Where the top-level Pixel Data element is: its header, its value, the declared length
    (UNDEFINED_LENGTH when encapsulated)."""

    header: int
    value: int
    length: int


class _PixelDataReached(Exception):
    def __init__(self, start: PixelDataStart):
        self.start = start


def find_pixel_data(prefix: FileBytes) -> PixelDataStart | None:
    """Where the top-level Pixel Data starts, found in the first bytes of a file (its header: what
    precedes the pixels). None when the prefix ends, or something in it does not frame, before
    Pixel Data (read more, or the whole file, whose walk says what is wrong), or when the data set
    is deflated (its elements have no place in the file)."""
    try:
        meta = read_file_meta(prefix)
        if meta.transfer_syntax == DEFLATED:
            return None
        explicit, little = _encoding(prefix, meta.end, meta.transfer_syntax)
        encapsulated = bool(meta.transfer_syntax) and meta.transfer_syntax not in NATIVE_SYNTAXES
        walker = _Walker(prefix, little, encapsulated=encapsulated, stop_at_pixel_data=True)
        walker.dataset(meta.end, len(prefix), explicit, depth=0, top=True)
    except _PixelDataReached as reached:
        return reached.start
    except Rejected:
        return None
    return None


def same_tags(found: Sequence[int], frame: DatasetFrame, where: str = "the data set") -> None:
    """pydicom's reading of one data set must have the tags the walk found, in order.

    (As arrays: comparing pydicom's tags one by one costs a Python-level Tag.__eq__ each.)
    """
    if array("L", found) != frame.tags:
        raise malformed(f"{where} reads differently from its framing")


def _file_meta(data: FileBytes, pos: int) -> FileMeta:
    syntax = sop_class = ""
    previous = -1
    while pos + 8 <= len(data):
        group, element, vr, length = struct.unpack_from("<HH2sH", data, pos)
        if group != 0x0002:
            break
        tag = group << 16 | element
        if vr not in _VALID_VRS:
            raise malformed(f"file meta element {tag_text(tag)} has no valid VR")
        header = 8
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise truncated("the file ends inside the file meta")
            (length,) = struct.unpack_from("<L", data, pos + 8)
            header = 12
        if length == UNDEFINED_LENGTH or pos + header + length > len(data):
            raise truncated(f"file meta element {tag_text(tag)} runs past the end of the file")
        if tag <= previous:
            raise malformed(f"file meta element {tag_text(tag)} is out of order")
        previous = tag
        if tag in (0x00020002, 0x00020010):
            text = data[pos + header : pos + header + length].rstrip(b"\0 ").decode("latin-1")
            if tag == 0x00020010:
                syntax = text
            else:
                sop_class = text
        pos += header + length
    return FileMeta(pos, syntax, sop_class)


def _inflate(data: bytes, limit: int) -> bytes:
    """Deflated Explicit VR Little Endian (PS3.5 A.5), with a bound: a small file can inflate to
    gigabytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        raise malformed("the deflated data set cannot be inflated") from None
    if len(out) > limit:
        raise Rejected("too_large", f"the deflated data set inflates to more than {limit} bytes")
    if not inflater.eof:
        raise truncated("the deflated data set is cut short")
    return out


def _looks_explicit(stream: FileBytes, pos: int) -> bool:
    """pydicom's test: two upper-case letters where an explicit VR would be."""
    vr = stream[pos + 4 : pos + 6]
    return len(vr) == 2 and 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B


def _encoding(stream: FileBytes, start: int, syntax: str) -> tuple[bool, bool]:
    """(explicit VR, little endian) for the top-level data set, as pydicom decides it."""
    if start >= len(stream):
        return True, True
    if not syntax:
        if _looks_explicit(stream, start):
            (group,) = struct.unpack_from("<H", stream, start)
            return True, group < 1024
        return False, True
    if syntax == _EXPLICIT_BE:
        return True, False
    if UID(syntax).is_transfer_syntax and UID(syntax).is_implicit_VR:
        # Declared implicit: pydicom switches when the first element plainly has a VR.
        return _looks_explicit(stream, start), True
    return _looks_explicit(stream, start) or start + 6 > len(stream), True


class _Walker:
    def __init__(self, stream: FileBytes, little: bool, *, encapsulated: bool, stop_at_pixel_data: bool = False):
        self.stream = stream
        self.stop_at_pixel_data = stop_at_pixel_data
        self.little = little
        self.encapsulated_syntax = encapsulated
        order = "<" if little else ">"
        self.short_header = struct.Struct(order + "HH2sH").unpack_from
        self.implicit_header = struct.Struct(order + "HHL").unpack_from
        self.long_length = struct.Struct(order + "L").unpack_from
        self.pixel_data: PixelFraming | None = None

    def dataset(
        self, pos: int, end: int, explicit: bool, *, depth: int, top: bool = False, in_item: bool = False
    ) -> tuple[DatasetFrame, int]:
        """Walk elements from `pos` up to `end` (or, in an undefined-length item, to its delimiter).

        Returns the frame and the position after the data set (after the item delimiter, if any).
        """
        stream = self.stream
        tags: list[int] = []
        items: dict[int, tuple[DatasetFrame, ...]] = {}
        previous = -1
        if top and pos + 8 <= end and self.implicit_header(stream, pos)[0] == 0x0000:
            # A command set (group 0000) at the start: pydicom reads it as implicit VR little endian.
            pos, previous = self._command_set(pos, end, tags)
        short_header, implicit_header, long_length = self.short_header, self.implicit_header, self.long_length
        append = tags.append
        while pos < end:
            if pos + 8 > end:
                raise truncated(f"the data ends inside an element header at offset {pos}")
            if explicit:
                group, element, vr, length = short_header(stream, pos)
                if vr in _SHORT_VRS:
                    header = 8
                elif vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise truncated(f"the data ends inside the header of {tag_text(group << 16 | element)}")
                    (length,) = long_length(stream, pos + 8)
                    header = 12
                elif group == 0xFFFE:  # an item or delimiter tag: no VR, a 32-bit length
                    (length,) = long_length(stream, pos + 4)
                    vr = b""
                    header = 8
                else:
                    raise malformed(f"element {tag_text(group << 16 | element)} has no valid VR")
            else:
                group, element, length = implicit_header(stream, pos)
                vr = b""
                header = 8
            tag = group << 16 | element
            if group == 0xFFFE:
                if tag != ITEM_DELIMITER:
                    raise malformed(f"{tag_text(tag)} (an item tag) inside a data set")
                if not in_item:
                    raise malformed(f"an item delimiter where none belongs, at offset {pos}")
                if length != 0:
                    raise malformed(f"an item delimiter with length {length}")
                return DatasetFrame(array("L", tags), items), pos + 8
            if tag <= previous:
                problem = "repeated" if tag == previous else "out of order"
                raise malformed(f"element {tag_text(tag)} is {problem}")
            if group == 0x0002 and depth == 0:
                raise malformed(f"file meta element {tag_text(tag)} inside the data set")
            previous = tag
            value = pos + header
            if tag == PIXEL_DATA and top and self.stop_at_pixel_data:
                raise _PixelDataReached(PixelDataStart(pos, value, length))
            if length == UNDEFINED_LENGTH:
                items_or_none, pos = self._undefined(tag, vr, value, end, explicit, depth, top)
                if items_or_none is not None:
                    items[tag] = items_or_none
            else:
                pos = value + length
                if pos > end:
                    raise truncated(f"element {tag_text(tag)} declares {length} bytes; {max(end - value, 0)} remain")
                # A defined-length value to walk as items: SQ, or (implicit VR, or explicit UN, which
                # pydicom reads with the dictionary's VR) a tag the dictionary calls SQ.
                if vr == b"SQ" or ((not explicit or vr == b"UN") and _dictionary_vr(tag) == "SQ"):
                    items[tag], _ = self._items(value, pos, explicit and vr != b"UN", depth + 1)
                elif tag == PIXEL_DATA and top:
                    if self.encapsulated_syntax:
                        raise malformed("native Pixel Data under an encapsulated transfer syntax")
                    self.pixel_data = PixelFraming(value, length, encapsulated=False)
            append(tag)
        if in_item:
            raise truncated("an item of undefined length has no item delimiter")
        return DatasetFrame(array("L", tags), items), pos

    def _command_set(self, pos: int, end: int, tags: list[int]) -> tuple[int, int]:
        previous = -1
        while pos + 8 <= end:
            group, element, length = struct.unpack_from("<HHL", self.stream, pos)
            if group != 0x0000:
                break
            tag = group << 16 | element
            if tag <= previous or length == UNDEFINED_LENGTH or pos + 8 + length > end:
                raise malformed(f"command element {tag_text(tag)} is damaged")
            previous = tag
            tags.append(tag)
            pos += 8 + length
        return pos, previous

    def _undefined(
        self, tag: int, vr: bytes, pos: int, end: int, explicit: bool, depth: int, top: bool
    ) -> tuple[tuple[DatasetFrame, ...] | None, int]:
        """An element of undefined length: a sequence, or encapsulated Pixel Data."""
        if tag == PIXEL_DATA and (vr in (b"OB", b"OW") or not explicit):
            if not self.encapsulated_syntax:
                raise malformed("encapsulated Pixel Data under a native transfer syntax")
            return None, self._encapsulated(pos, end, top)
        if vr in (b"SQ", b"UN") or (not explicit and self._item_tag_at(pos, end)):
            # UN of undefined length is a sequence whose items are implicit VR (PS3.5 6.2.2).
            return self._items(pos, end, explicit and vr != b"UN", depth + 1, defined=False)
        raise malformed(f"element {tag_text(tag)} has undefined length but is not a sequence")

    def _item_tag_at(self, pos: int, end: int) -> bool:
        if pos + 8 > end:
            return False
        group, element, _ = self.implicit_header(self.stream, pos)
        return (group << 16 | element) in (ITEM, SEQUENCE_DELIMITER)

    def _items(
        self, pos: int, end: int, explicit: bool, depth: int, *, defined: bool = True
    ) -> tuple[tuple[DatasetFrame, ...], int]:
        """The items of a sequence: exactly up to `end` (defined length), or up to its sequence
        delimiter, within `end` (undefined length). Returns them and the position after."""
        if depth > MAX_DEPTH:
            raise malformed(f"sequences nested more than {MAX_DEPTH} deep")
        stream = self.stream
        frames: list[DatasetFrame] = []
        while True:
            if defined and pos == end:
                return tuple(frames), pos
            if pos + 8 > end:
                if not defined:
                    raise truncated("a sequence of undefined length has no sequence delimiter")
                raise malformed(f"a sequence holds {end - pos} stray bytes after its items")
            group, element, length = self.implicit_header(stream, pos)
            tag = group << 16 | element
            if tag == SEQUENCE_DELIMITER and not defined:
                if length != 0:
                    raise malformed(f"a sequence delimiter with length {length}")
                return tuple(frames), pos + 8
            if tag != ITEM:
                raise malformed(f"{tag_text(tag)} where a sequence item belongs, at offset {pos}")
            start = pos + 8
            # An item may be implicit VR inside an explicit VR data set (pydicom reads it so).
            item_explicit = explicit and (start >= end or _looks_explicit(stream, start))
            if length == UNDEFINED_LENGTH:
                frame, pos = self.dataset(start, end, item_explicit, depth=depth, in_item=True)
            else:
                if start + length > end:
                    raise truncated(f"a sequence item declares {length} bytes; {max(end - start, 0)} remain")
                frame, pos = self.dataset(start, start + length, item_explicit, depth=depth)
            frames.append(frame)

    def _encapsulated(self, pos: int, end: int, top: bool) -> int:
        """PS3.5 A.4: the offset table item, the fragments, the sequence delimiter."""
        stream = self.stream
        fragments: list[tuple[int, int]] = []
        offset_table: tuple[int, ...] = ()
        first = True
        start = pos
        while True:
            if pos + 8 > end:
                raise truncated("encapsulated Pixel Data has no sequence delimiter")
            group, element, length = self.implicit_header(stream, pos)
            tag = group << 16 | element
            if tag == SEQUENCE_DELIMITER:
                if length != 0:
                    raise malformed("encapsulated Pixel Data ends with a delimiter of non-zero length")
                pos += 8
                break
            if tag != ITEM or length == UNDEFINED_LENGTH:
                raise malformed("encapsulated Pixel Data has a damaged item header")
            if pos + 8 + length > end:
                raise truncated("encapsulated Pixel Data ends inside a fragment")
            if first:
                if length % 4:
                    raise malformed("the Basic Offset Table's length is not a multiple of 4")
                order = "<" if self.little else ">"
                offset_table = struct.unpack_from(f"{order}{length // 4}L", stream, pos + 8)
                first = False
            else:
                fragments.append((pos + 8, length))
            pos += 8 + length
        if first:
            raise malformed("encapsulated Pixel Data has no Basic Offset Table item")
        if not fragments:
            raise truncated("encapsulated Pixel Data has no fragments")
        if top:
            self.pixel_data = PixelFraming(
                start, pos - start, encapsulated=True, fragments=tuple(fragments), offset_table=offset_table
            )
        return pos


_DICTIONARY_VR: dict[int, str] = {}


def _dictionary_vr(tag: int) -> str:
    vr = _DICTIONARY_VR.get(tag)
    if vr is None:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = ""
        _DICTIONARY_VR[tag] = vr
    return vr
