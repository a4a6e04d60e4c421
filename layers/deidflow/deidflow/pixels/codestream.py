"""What a compressed frame declares in its own header: JPEG's frame header (SOFn, ISO 10918-1
B.2.2; JPEG-LS SOF55, ISO 14495-1), JPEG 2000's image size (SIZ, ISO 15444-1 A.5.1), RLE's number
of segments (PS3.5 G.5).

Why: Rows and Columns are one header element each; set to 1, a scan looks at one line of pixels
while the frame holds the whole image, name and all, and a researcher's reader fails on it. The
header and the codestream must agree.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from pydicom.uid import UID, RLELossless

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


def codestream_problem(frame: bytes, syntax: UID, rows: int, columns: int, samples: int, bits: int) -> str | None:
    """Why a frame's own header disagrees with the DICOM header (no values named), None when it agrees
    or the syntax's frames declare nothing to compare."""
    if syntax == RLELossless:
        if len(frame) < 64:
            return "an RLE frame without its 64-byte header"
        (segments,) = struct.unpack_from("<L", frame, 0)
        expected = samples * max(bits // 8, 1)
        if segments != expected:
            return f"{segments} RLE segments where {samples} sample(s) of {bits} bits need {expected}"
        return None
    name = syntax.name
    if "2000" in name:
        size = j2k_frame_size(frame)
    elif "JPEG" in name:
        size = jpeg_frame_size(frame)
    else:
        return None  # deflate and the video syntaxes: nothing here to compare
    if size is None:
        return f"no {name} image header"
    if (size.rows, size.columns, size.components) != (rows, columns, samples):
        return (
            f"{size.columns}x{size.rows}x{size.components} in its codestream, {columns}x{rows}x{samples} in the header"
        )
    return None
