"""Burned-in text: render frames, detect text, redact it in every frame, re-encode.

Public API (what the de-identification engine, the CLI and the redaction Lambda call):

    policy = PixelPolicy(mode="auto", detector="local", margin=4)
    detector = make_detector(policy.detector)            # "rekognition": make_detector(name, client=...)
    scan, reason = needs_pixel_scan(ds, policy)          # cheap, header only
    result = redact_burned_in_text(ds, policy, detector) # mutates ds; PixelResult
"""

from .boxes import RedactionBox, merge_boxes
from .detectors import (
    DetectionError,
    DetectorBusy,
    DetectorUnavailable,
    NoDetector,
    RapidOcrDetector,
    RekognitionDetector,
    TesseractDetector,
    TextDetector,
    detect_text,
    make_detector,
)
from .encode import EncodingPlan, PixelEncodeError, plan_encoding
from .policy import (
    DeviceSignature,
    PixelPolicy,
    fixed_boxes,
    frames_to_detect,
    needs_pixel_scan,
    policy_from_mapping,
    policy_from_rules,
)
from .redact import PixelResult, clear_embedded_overlays, redact_burned_in_text, remove_overlays_and_icons
from .render import PixelDecodeError, PixelsTooLarge, PixelsUntrusted, decode_frame, render_for_detection
from .text_filter import TextFilter, TextReading

__all__ = [
    "DetectionError",
    "DetectorBusy",
    "DetectorUnavailable",
    "DeviceSignature",
    "EncodingPlan",
    "NoDetector",
    "PixelDecodeError",
    "PixelEncodeError",
    "PixelPolicy",
    "PixelResult",
    "PixelsTooLarge",
    "PixelsUntrusted",
    "RapidOcrDetector",
    "RedactionBox",
    "RekognitionDetector",
    "TesseractDetector",
    "TextDetector",
    "TextFilter",
    "TextReading",
    "clear_embedded_overlays",
    "decode_frame",
    "detect_text",
    "fixed_boxes",
    "frames_to_detect",
    "make_detector",
    "merge_boxes",
    "needs_pixel_scan",
    "plan_encoding",
    "policy_from_mapping",
    "policy_from_rules",
    "redact_burned_in_text",
    "remove_overlays_and_icons",
    "render_for_detection",
]
