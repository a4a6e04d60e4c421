"""Text detectors by name: "none", "local" (= "rapidocr"), "tesseract", "rekognition".

Rooms: `base` (the interface, tiling), one module per back-end. A back-end that talks to a
service takes its client from the caller: none is built here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import (
    DetectionError,
    DetectorBusy,
    DetectorUnavailable,
    NoDetector,
    TextDetector,
    check_frame,
    detect_text,
    iter_tiles,
)
from .rapidocr import RapidOcrDetector
from .rekognition import RekognitionDetector
from .tesseract import TesseractDetector


def _rekognition(*, client: Any = None, **options: Any) -> TextDetector:
    if client is None:
        raise DetectorUnavailable(
            "the rekognition detector needs an AWS client, which the entry point builds "
            "(deidflow.cloud.services.make_rekognition_client)"
        )
    return RekognitionDetector(client, **options)


DETECTOR_FACTORIES: dict[str, Callable[..., TextDetector]] = {
    "local": RapidOcrDetector,
    "rapidocr": RapidOcrDetector,
    "tesseract": TesseractDetector,
    "rekognition": _rekognition,
    "none": NoDetector,
}


def make_detector(name: str, **options: Any) -> TextDetector:
    """Build a detector by name; "rekognition" takes `client=` (a boto3 Rekognition client)."""
    try:
        factory = DETECTOR_FACTORIES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown text detector {name!r}; choose one of {sorted(DETECTOR_FACTORIES)}") from None
    return factory(**options)


__all__ = [
    "DETECTOR_FACTORIES",
    "DetectionError",
    "DetectorBusy",
    "DetectorUnavailable",
    "NoDetector",
    "RapidOcrDetector",
    "RekognitionDetector",
    "TesseractDetector",
    "TextDetector",
    "check_frame",
    "detect_text",
    "iter_tiles",
    "make_detector",
]
