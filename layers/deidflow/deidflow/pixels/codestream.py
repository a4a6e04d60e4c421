"""The size a compressed frame declares in its own header: JPEG's frame header (SOFn, PS3.5 A.4.1
and ISO 10918-1 B.2.2; JPEG-LS SOF55, ISO 14495-1) and JPEG 2000's image size (SIZ, ISO 15444-1
A.5.1). RLE declares none.

Why: Rows and Columns are one header element each; set to 1, a scan looks at one line of pixels
while the frame holds the whole image, name and all. The header and the codestream must agree.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_SOF_MARKERS = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI


class FrameSize(NamedTuple):
    rows: int
    columns: int
    components: int


def jpeg_frame_size(frame: bytes) -> FrameSize | None:
    """The first frame header of a JPEG or JPEG-LS stream, None when there is none."""
    pos = 2 if frame[:2] == b"\xff\xd8" else 0
    while pos + 4 <= len(frame):
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", frame, pos + 2)
        if marker in _SOF_MARKERS:
            if pos + 10 > len(frame):
                return None
            _, rows, columns, components = struct.unpack_from(">BHHB", frame, pos + 4)
            return FrameSize(rows, columns, components)
        if marker in (0xDA, 0xD9):  # a scan or the end before any frame header
            return None
        pos += 2 + length
    return None


def j2k_frame_size(frame: bytes) -> FrameSize | None:
    """The image size of a JPEG 2000 codestream (bare or in a JP2 file), None when there is none."""
    pos = frame.find(b"\xff\x4f\xff\x51")  # SOC, then SIZ
    if pos < 0 or pos + 4 + 38 > len(frame):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">LLLL", frame, pos + 8)
    (components,) = struct.unpack_from(">H", frame, pos + 4 + 36)
    return FrameSize(ysiz - yosiz, xsiz - xosiz, components)
