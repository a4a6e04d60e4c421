"""What every text detector is: one rendered frame (rows, columns, 3) uint8 RGB in, candidate
boxes with what was read in them out; the filter that turns candidates into redaction boxes; and
the tiling the back-ends share.

Back-ends report what they saw (``TextReading``: box, characters, confidence) and decide nothing:
``detect_text`` passes every candidate through the rules' ``TextFilter`` (text_filter.py), so the
local model, Rekognition and Tesseract are held to the same evidence.

Back-ends must fail loudly (raise DetectionError) rather than return "no text" when they could
not look: an empty list means "looked and found nothing", and that decides whether pixels are
published untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np

from ..boxes import RedactionBox, merge_boxes
from ..text_filter import TextFilter, TextReading


class DetectionError(Exception):
    """A detector could not examine a frame; the instance must not be published as clean."""


class DetectorUnavailable(DetectionError):
    """The back-end's package, binary or model is not installed here."""


class DetectorBusy(DetectionError):
    """The back-end's service is throttled or failing for now (a 429 or 5xx, a dropped connection):
    not the frame's fault, so the same frame is worth trying again later."""


@runtime_checkable
class TextDetector(Protocol):
    """One frame in, candidate text boxes and their readings out."""

    name: str

    def read(self, frame_rgb8: np.ndarray) -> list[TextReading]: ...


def detect_text(
    detector: TextDetector,
    frame_rgb8: np.ndarray,
    text_filter: TextFilter | None = None,
    region: RedactionBox | None = None,
) -> list[RedactionBox]:
    """The boxes to redact in one rendered frame: the detector's candidates the filter keeps.

    ``region`` (frame coordinates, inside the frame): detect in that part of the frame only; the
    boxes come back in frame coordinates. A back-end whose scale depends on the image's size (the
    local one) has ``read_crop(crop, frame_shape)`` to read a crop as it would read the frame."""
    if region is None:
        readings = detector.read(frame_rgb8)
    else:
        crop = frame_rgb8[region.y0 : region.y1, region.x0 : region.x1]
        read_crop = getattr(detector, "read_crop", None)
        in_crop = read_crop(crop, frame_rgb8.shape[:2]) if read_crop is not None else detector.read(crop)
        readings = [replace(r, box=r.box.shifted(region.x0, region.y0)) for r in in_crop]
    return merge_boxes((text_filter or TextFilter()).boxes(readings, frame_rgb8))


def check_frame(frame_rgb8: np.ndarray) -> None:
    if frame_rgb8.dtype != np.uint8 or frame_rgb8.ndim != 3 or frame_rgb8.shape[2] != 3:
        raise ValueError(f"detectors take (rows, columns, 3) uint8 RGB, got {frame_rgb8.shape} {frame_rgb8.dtype}")


class NoDetector:
    """Finds nothing: headers-only runs, or manual/device-signature boxes alone."""

    name = "none"

    def read(self, frame_rgb8: np.ndarray) -> list[TextReading]:
        check_frame(frame_rgb8)
        return []


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest ``tile``-long tiles covering [0, length), each pair
    overlapping by at least ``overlap``, spread evenly.

    Overlap lets a word cut by one tile edge be seen whole in the neighbouring tile.
    """
    if length <= tile:
        return [0]
    step = max(tile - overlap, 1)
    count = -(-(length - overlap) // step)  # ceil
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def iter_tiles(rows: int, columns: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) tiles covering a rows x columns frame."""
    for y0 in tile_origins(rows, tile, overlap):
        for x0 in tile_origins(columns, tile, overlap):
            yield x0, y0, min(x0 + tile, columns), min(y0 + tile, rows)
