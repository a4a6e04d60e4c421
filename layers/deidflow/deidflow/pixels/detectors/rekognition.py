"""Amazon Rekognition DetectText back-end.

The only module of the pixels package that talks to AWS, and only through a client handed in:
the edge owns credentials, region and retry policy (`deidflow.cloud.services.make_rekognition_client`
builds the one the Lambdas and the CLI use).

Limits this works around (Rekognition "Guidelines and quotas", DetectText reference):
* image bytes at most 5 MB, PNG or JPEG, at least 80 x 80 pixels;
* at most 100 words per image - a dense frame is split into overlapping quadrants and each is
  sent again, so words beyond the first 100 are not silently left unredacted;
* small text in a big image is missed more often, so big frames are tiled from the start.

Every WORD and LINE comes back as a ``TextReading`` with its ``DetectedText`` and ``Confidence``:
the text filter (text_filter.py) decides which are redacted, by the same rules as the local model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..boxes import RedactionBox
from ..png import encode_png
from ..text_filter import TextReading
from .base import DetectionError, DetectorBusy, check_frame, iter_tiles

log = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 5 * 1024 * 1024
MIN_IMAGE_SIDE = 80
WORD_LIMIT = 100


class RekognitionDetector:
    """Text boxes from Rekognition DetectText, tiled so each request stays within its limits."""

    name = "rekognition"

    def __init__(
        self,
        client: Any,
        *,
        max_tile_side: int = 1280,
        tile_overlap: int = 64,
        max_split_depth: int = 3,
    ) -> None:
        self.client = client
        self.max_tile_side = max_tile_side
        self.tile_overlap = tile_overlap
        self.max_split_depth = max_split_depth
        self.requests_sent = 0
        retries = getattr(getattr(getattr(client, "meta", None), "config", None), "retries", None)
        if not retries or retries.get("mode") != "adaptive":
            # not an error: the caller may retry at its own level; but throttling is likely
            log.warning("Rekognition client has no adaptive retry mode; throttling may fail frames")

    def read(self, frame_rgb8: np.ndarray) -> list[TextReading]:
        check_frame(frame_rgb8)
        rows, columns = frame_rgb8.shape[:2]
        found: list[TextReading] = []
        for x0, y0, x1, y1 in iter_tiles(rows, columns, self.max_tile_side, self.tile_overlap):
            found.extend(self._detect_region(frame_rgb8, x0, y0, x1, y1, depth=0))
        return found

    def _split(self, frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, depth: int) -> list[TextReading]:
        half_w = (x1 - x0 + 1) // 2
        half_h = (y1 - y0 + 1) // 2
        overlap = min(self.tile_overlap, half_w // 2, half_h // 2)
        found: list[TextReading] = []
        for qy0, qy1 in ((y0, y0 + half_h + overlap), (y1 - half_h - overlap, y1)):
            for qx0, qx1 in ((x0, x0 + half_w + overlap), (x1 - half_w - overlap, x1)):
                found.extend(
                    self._detect_region(frame, max(qx0, x0), max(qy0, y0), min(qx1, x1), min(qy1, y1), depth + 1)
                )
        return found

    def _detect_region(self, frame: np.ndarray, x0: int, y0: int, x1: int, y1: int, depth: int) -> list[TextReading]:
        region = frame[y0:y1, x0:x1]
        can_split = depth < self.max_split_depth and min(x1 - x0, y1 - y0) >= 2 * MIN_IMAGE_SIDE
        image = _pad_to_minimum(region)
        payload = encode_png(image)
        if len(payload) > MAX_IMAGE_BYTES:
            if can_split:
                return self._split(frame, x0, y0, x1, y1, depth)
            raise DetectionError("frame region cannot be encoded under Rekognition's 5 MB limit")
        response = self._call(payload)
        sent_rows, sent_columns = image.shape[:2]
        found: list[TextReading] = []
        words = 0
        for detection in response.get("TextDetections", []):
            if detection.get("Type") == "WORD":
                words += 1
            confidence = float(detection.get("Confidence", 0.0))
            geometry = detection.get("Geometry", {}).get("BoundingBox")
            if not geometry:
                continue
            left = float(geometry.get("Left", 0.0)) * sent_columns
            top = float(geometry.get("Top", 0.0)) * sent_rows
            right = left + float(geometry.get("Width", 0.0)) * sent_columns
            bottom = top + float(geometry.get("Height", 0.0)) * sent_rows
            box = RedactionBox(
                int(np.floor(left)),
                int(np.floor(top)),
                int(np.ceil(right)),
                int(np.ceil(bottom)),
                confidence / 100.0,
                "rekognition",
            )
            # padding added to reach 80 px is not part of the frame
            inside = box.clipped(x1 - x0, y1 - y0)
            if inside is not None:
                found.append(
                    TextReading(inside.shifted(x0, y0), str(detection.get("DetectedText", "")), confidence / 100)
                )
        if words >= WORD_LIMIT and can_split:
            # DetectText stops at 100 words: anything past them is unknown, so look closer.
            found.extend(self._split(frame, x0, y0, x1, y1, depth))
        elif words >= WORD_LIMIT:
            log.warning("Rekognition word limit reached on a region too small to split further")
        return found

    def _call(self, payload: bytes) -> dict[str, Any]:
        self.requests_sent += 1
        try:
            return self.client.detect_text(Image={"Bytes": payload})
        except Exception as exc:  # botocore ClientError, EndpointConnectionError, ...
            # the error code is safe to report; the image is not included
            from ...cloud.errors import is_transient

            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            if is_transient(exc):  # throttled or failing for now: retried, never a verdict on the image
                raise DetectorBusy(f"Rekognition DetectText is busy: {code}") from exc
            raise DetectionError(f"Rekognition DetectText failed: {code}") from exc


def _pad_to_minimum(region: np.ndarray) -> np.ndarray:
    rows, columns = region.shape[:2]
    if rows >= MIN_IMAGE_SIDE and columns >= MIN_IMAGE_SIDE:
        return region
    padded = np.zeros((max(rows, MIN_IMAGE_SIDE), max(columns, MIN_IMAGE_SIDE), 3), dtype=np.uint8)
    padded[:rows, :columns] = region
    return padded
