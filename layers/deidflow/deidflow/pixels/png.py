"""A minimal PNG writer (stdlib zlib only).

Detectors that take image bytes (Rekognition, the tesseract binary) need PNG; writing it here
keeps the Lambda back-end free of an imaging library.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, compression_level: int = 6) -> bytes:
    """Encode a (rows, columns) grey or (rows, columns, 3) RGB uint8 array as PNG."""
    if image.dtype != np.uint8:
        raise ValueError("encode_png needs uint8 pixels")
    if image.ndim == 2:
        colour_type, channels = 0, 1
    elif image.ndim == 3 and image.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"encode_png needs grey or RGB, got shape {image.shape}")
    rows, columns = image.shape[:2]
    scanlines = np.ascontiguousarray(image).reshape(rows, columns * channels)
    # filter type 0 (None) on every scanline: simple, and zlib does the real work
    raw = np.hstack([np.zeros((rows, 1), dtype=np.uint8), scanlines]).tobytes()
    header = struct.pack(">IIBBBBB", columns, rows, 8, colour_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw, compression_level)),
            _chunk(b"IEND", b""),
        )
    )
