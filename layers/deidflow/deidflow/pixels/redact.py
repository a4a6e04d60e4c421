"""Redact burned-in text: decide, detect on selected frames (sampling.py), fill the union in every frame, re-encode.

JPEG Baseline/Extended frames are not decoded for writing: the blocks under the boxes are blanked
in the DCT domain (jpeg_blocks.py) and the rest of each code stream keeps its coefficients. Every
other input, and JPEG the transcoder refuses, is decoded, filled and re-encoded (encode.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian

from ..tags import is_overlay_group
from .boxes import RedactionBox, merge_boxes
from .detectors import NoDetector, TextDetector
from .encode import (
    DCT_DOMAIN_SYNTAXES,
    EncodingPlan,
    plan_encoding,
    record_lossy_history,
    redact_jpeg_in_place,
    write_frames,
)
from .jpeg_blocks import JpegNotTranscodable
from .policy import PixelPolicy, fixed_boxes, needs_pixel_scan
from .render import (
    PixelDecodeError,
    check_redactable,
    iter_decoded_frames,
    number_of_frames,
    transfer_syntax_of,
)
from .sampling import DetectionFrames

log = logging.getLogger(__name__)

ICON_IMAGE_SEQUENCE = BaseTag(0x00880200)


@dataclass
class PixelResult:
    """What happened to one instance's pixels. Carries no header values (no PHI)."""

    scanned: bool
    reason: str
    transfer_syntax_in: str
    transfer_syntax_out: str
    boxes: list[RedactionBox] = field(default_factory=list)
    frames_scanned: tuple[int, ...] = ()
    frames_redacted: int = 0
    redacted: bool = False
    reencoded: bool = False
    encoding_note: str = ""
    detector: str = ""
    overlays_removed: int = 0
    icons_removed: int = 0
    unscanned: bool = False  # needed a scan, got none: published only because the rules allow it

    def as_dict(self) -> dict[str, Any]:
        return {
            "scanned": self.scanned,
            "reason": self.reason,
            "transfer_syntax_in": self.transfer_syntax_in,
            "transfer_syntax_out": self.transfer_syntax_out,
            "boxes": [box.as_dict() for box in self.boxes],
            "frames_scanned": list(self.frames_scanned),
            "frames_redacted": self.frames_redacted,
            "redacted": self.redacted,
            "reencoded": self.reencoded,
            "encoding_note": self.encoding_note,
            "detector": self.detector,
            "overlays_removed": self.overlays_removed,
            "icons_removed": self.icons_removed,
            "unscanned": self.unscanned,
        }


def remove_overlays_and_icons(ds: Dataset, *, overlays: bool = True, icons: bool = True) -> tuple[int, int]:
    """Delete overlay planes (60xx groups) and Icon Image Sequences at any depth, in place.

    Returns (overlay groups removed, icon sequences removed). Overlays are bitmaps drawn over
    the image - often annotations with names or dates - and icons are thumbnails of the very
    pixels being redacted, so neither can be kept.
    """
    overlay_groups: set[tuple[int, int]] = set()
    icons_removed = 0

    def walk(dataset: Dataset, depth: int) -> None:
        nonlocal icons_removed
        # Tags and VRs only: decoding every value here would read (and fail on) values the header
        # pass is about to remove anyway.
        for tag in list(dataset.keys()):
            if overlays and is_overlay_group(tag):
                overlay_groups.add((id(dataset), tag >> 16))
                del dataset[tag]
            elif icons and tag == ICON_IMAGE_SEQUENCE:
                icons_removed += 1
                del dataset[tag]
            elif getattr(dataset.get_item(tag), "VR", None) == "SQ" and (tag >> 16) % 2 == 0:
                for item in dataset[tag].value:
                    walk(item, depth + 1)

    walk(ds, 0)
    return len(overlay_groups), icons_removed


def clear_embedded_overlays(ds: Dataset) -> int:
    """Clear overlays stored in the unused bits of native Pixel Data; return how many were.

    An overlay group with an Overlay Bit Position (60xx,0102) and no Overlay Data (60xx,3000) is
    the retired embedded form (PS3.3 C.9.2, PS3.5 8.1.2): its bitmap (often a name) sits in bits of
    each pixel above or below Bits Stored. Removing the group removes the description, not the
    bits, so they are cleared here. Compressed pixel data cannot hold one (PS3.5 8.1.2) and is
    rejected if it claims to.
    """
    positions: set[int] = set()
    for group in range(0x6000, 0x6020, 2):
        base = group << 16
        if base | 0x3000 in ds or base | 0x0102 not in ds:
            continue
        try:
            positions.add(int(ds[base | 0x0102].value))
        except (TypeError, ValueError):
            raise PixelDecodeError("an overlay's bit position cannot be read") from None
    if not positions or "PixelData" not in ds:
        return 0
    bits_allocated = int(ds.get("BitsAllocated") or 0)
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    high_bit = int(ds.get("HighBit") if ds.get("HighBit") is not None else bits_stored - 1)
    pixel_bits = range(high_bit - bits_stored + 1, high_bit + 1)
    embedded = {p for p in positions if p not in pixel_bits and 0 <= p < bits_allocated}
    if not embedded:
        return 0  # a bit position inside the pixel bits holds no overlay: nothing to clear
    if transfer_syntax_of(ds).is_compressed:
        raise PixelDecodeError("an overlay embedded in compressed Pixel Data cannot be removed")
    if bits_allocated not in (16, 32):
        raise PixelDecodeError(f"an embedded overlay in {bits_allocated}-bit pixels")
    order = ">" if transfer_syntax_of(ds) == ExplicitVRBigEndian else "<"
    words = np.frombuffer(ds.PixelData, dtype=f"{order}u{bits_allocated // 8}").copy()
    mask = (1 << bits_allocated) - 1
    for position in embedded:
        mask &= ~(1 << position)
    words &= np.array(mask, dtype=words.dtype)
    ds.PixelData = words.tobytes()
    return len(embedded)


def _fill_value(ds: Dataset, frames: np.ndarray, photometric: str) -> Any:
    """The stored value that displays as black: what a solid redaction box is filled with."""
    if photometric == "MONOCHROME2":
        return frames.min()
    if photometric == "MONOCHROME1":
        return frames.max()
    if photometric == "PALETTE COLOR":
        bits_stored = int(ds.get("BitsStored") or frames.dtype.itemsize * 8)
        indices = np.arange(min(2**bits_stored, 65536)).astype(frames.dtype).reshape(1, -1)
        rgb = apply_color_lut(indices, ds).astype(np.int64)
        return indices[0, int(np.argmin(rgb.sum(axis=-1)[0]))]
    return 0  # RGB (YCbCr was decoded to RGB)


def _clip_boxes(boxes: list[RedactionBox], margin: int, columns: int, rows: int) -> list[RedactionBox]:
    clipped = [box.padded(margin).clipped(columns, rows) for box in boxes]
    return merge_boxes(box for box in clipped if box is not None)


def redact_burned_in_text(ds: Dataset, policy: PixelPolicy, detector: TextDetector | None = None) -> PixelResult:
    """Find and blank burned-in text in ``ds`` (in place) as ``policy`` says.

    * Overlays and icon sequences are removed whatever the scan decision (policy permitting).
    * Not scanned, or scanned with no box found: PixelData is left byte for byte as it was.
    * Otherwise the union of detected, manual and device-signature boxes (plus margin) is filled
      solid in every frame, the pixels are re-encoded (see encode.py) and BurnedInAnnotation
      becomes NO.

    Raises render.PixelDecodeError, detect.DetectionError or encode.PixelEncodeError when the
    instance cannot be cleaned; the caller quarantines it.
    """
    detector = detector if detector is not None else NoDetector()
    tsyntax_in = transfer_syntax_of(ds)
    overlays_removed, icons_removed = remove_overlays_and_icons(
        ds, overlays=policy.remove_overlays, icons=policy.remove_icons
    )
    scan, reason = needs_pixel_scan(ds, policy)
    result = PixelResult(
        scanned=scan,
        reason=reason,
        transfer_syntax_in=str(tsyntax_in),
        transfer_syntax_out=str(tsyntax_in),
        detector=detector.name,
        overlays_removed=overlays_removed,
        icons_removed=icons_removed,
    )
    if not scan:
        return result

    check_redactable(ds, policy.max_decoded_bytes)
    rows, columns = int(ds.Rows), int(ds.Columns)
    frame_count = number_of_frames(ds)
    fixed = fixed_boxes(ds, policy)

    decoded: dict[int, np.ndarray] = {}
    found: list[RedactionBox] = []
    detect_on: list[int] = []
    if not isinstance(detector, NoDetector):
        # which frames: the fixed samples, plus (policy "changes") each frame with new text-like
        # strokes outside the boxes found so far, detected where they changed - hence the boxes
        # go back through frames_for_detection as found
        frames_for_detection = DetectionFrames(ds, policy, frame_count, fixed)
        for index, frame, _photometric, rendered, regions in frames_for_detection:
            decoded[index] = frame
            found.extend(frames_for_detection.detect(detector, rendered, regions, policy.text_filter))
        detect_on = frames_for_detection.detected
    result.frames_scanned = tuple(detect_on)

    boxes = _clip_boxes(fixed + found, policy.margin, columns, rows)
    result.boxes = boxes
    if not boxes:
        if detect_on:
            result.reason = f"{reason}; no text found"
        else:
            result.reason = f"{reason}; detector 'none' and no fixed boxes: pixels not examined"
        return result

    plan = _redact_in_dct_domain(ds, tsyntax_in, boxes) if policy.jpeg_in_dct_domain else None
    if plan is None:
        plan = _redact_decoded(ds, tsyntax_in, boxes, policy, decoded, frame_count)
        result.reencoded = True
    ds.BurnedInAnnotation = "NO"

    result.redacted = True
    result.frames_redacted = frame_count
    result.transfer_syntax_out = str(plan.transfer_syntax_out)
    result.encoding_note = plan.note
    log.info(
        "redacted %d box(es) in %d frame(s); %s -> %s",
        len(boxes),
        frame_count,
        tsyntax_in.name,
        plan.transfer_syntax_out.name,
    )
    return result


def _redact_in_dct_domain(ds: Dataset, tsyntax_in: UID, boxes: list[RedactionBox]) -> EncodingPlan | None:
    """Blank the boxes in the JPEG code streams themselves; None when that is not possible here."""
    if tsyntax_in not in DCT_DOMAIN_SYNTAXES:
        return None
    record_lossy_history(ds, tsyntax_in)  # before PixelData is replaced: needs its size
    try:
        return redact_jpeg_in_place(ds, boxes)
    except JpegNotTranscodable as exc:
        # the message names a kind of stream, never a value from the header
        log.info("JPEG not redacted in the DCT domain (%s); decoding and re-encoding", exc)
        return None


def _redact_decoded(
    ds: Dataset,
    tsyntax_in: UID,
    boxes: list[RedactionBox],
    policy: PixelPolicy,
    decoded: dict[int, np.ndarray],
    frame_count: int,
) -> EncodingPlan:
    """Decode every frame, fill the boxes, write the frames back as encode.py plans."""
    input_photometric = str(ds.get("PhotometricInterpretation", ""))
    photometric = ""
    frames_list: list[np.ndarray] = []
    for index, frame, frame_photometric in iter_decoded_frames(ds, range(frame_count)):
        frames_list.append(decoded.pop(index, frame))
        photometric = frame_photometric
    frames = np.stack(frames_list)  # a fresh, writable copy
    del frames_list, decoded

    fill = _fill_value(ds, frames, photometric)
    for box in boxes:
        frames[:, box.y0 : box.y1, box.x0 : box.x1, ...] = fill

    plan = plan_encoding(ds, tsyntax_in, policy)
    if plan.input_was_lossy:
        record_lossy_history(ds, tsyntax_in)  # before PixelData is replaced: needs its size
    return write_frames(ds, frames, photometric, plan, input_photometric)
