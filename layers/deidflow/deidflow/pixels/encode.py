"""Write redacted frames back: which transfer syntax, and the header fixes that go with it.

Choices (documented here because the output must be explainable):

* Native input (Explicit/Implicit VR Little Endian, Deflated) stays in the same syntax.
  Explicit VR Big Endian is retired and pydicom writes no big-endian pixel data: it becomes
  Explicit VR Little Endian.
* Lossless compressed input is re-encoded in the same syntax when pydicom has an encoder here:
  RLE Lossless (pydicom's own), JPEG-LS Lossless (pyjpegls), JPEG 2000 Lossless
  (pylibjpeg-openjpeg; YBR_RCT is kept). Lossless syntaxes without an encoder (JPEG Lossless
  Process 14 / SV1, HTJ2K Lossless, JPEG 2000 Part 2) become Explicit VR Little Endian: still
  lossless, universally readable, just bigger.
* JPEG Baseline/Extended input is not decoded for writing at all: the 8x8 blocks under the
  boxes are blanked in the DCT domain and every other block keeps its coefficients
  (jpeg_blocks.py, ``redact_jpeg_in_place``). Same syntax, same size give or take a few percent,
  no second lossy step. Streams that module refuses (progressive, damaged, ambiguous colour)
  are handled like the other lossy input below.
* Other lossy input (JPEG-LS Near-Lossless, irreversible JPEG 2000, HTJ2K) is re-encoded from
  pixels. Policy ``lossy_output``:
  - "compressed" (default): JPEG-LS Lossless (measured on ultrasound-like 640x480 RGB frames
    decoded from JPEG: 6% smaller than JPEG 2000 Lossless and about 5x faster to encode); when
    that is over ``max_growth`` (1.5) times the input's Pixel Data - decoded lossy pixels carry
    their codec's noise and compress poorly losslessly - irreversible JPEG 2000 at the ratio
    that lands near the input size instead. That is a new lossy step, and it is recorded.
  - "explicit-vr-little-endian": uncompressed, no second lossy step, 10-20x bigger.
  - "jpeg-2000-lossless": no second lossy step, whatever its size.
  Lossy Image Compression stays "01"; when the header had not recorded the original lossy step,
  Method (ISO_10918_1, ISO_14495_1, ISO_15444_1, ISO_15444_15) and Ratio (uncompressed size /
  compressed size) are added for it. A new lossy step appends its own Method and Ratio (PS3.3
  C.7.6.1.1.5: the two stay the same length); a lossless re-encode appends nothing.
* YCbCr input is decoded to RGB and written as RGB (PlanarConfiguration 0), except JPEG 2000
  Lossless YBR_RCT which is re-encoded as YBR_RCT and irreversible JPEG 2000, written as YBR_ICT
  (its colour transform costs less at the same size). SOP Instance UID is never changed here:
  UIDs belong to the pseudonymisation step, which must stay deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pydicom import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_fragments, generate_frames
from pydicom.pixels import get_encoder, pack_bits
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ..tags import WRITABLE_NATIVE_SYNTAXES
from .boxes import RedactionBox
from .codestream import jpeg_frame_size
from .jpeg_blocks import JpegNotTranscodable, redact_jpeg_frame
from .policy import PixelPolicy

log = logging.getLogger(__name__)

REENCODABLE_LOSSLESS = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})
# JPEG 2000 (.91) and JPEG 2000 Part 2 (.93) may hold a reversible code stream; checked per file.
LOSSY_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000, JPEG2000MC, HTJ2K})

LOSSY_METHOD = {
    JPEGBaseline8Bit: "ISO_10918_1",
    JPEGExtended12Bit: "ISO_10918_1",
    JPEGLSNearLossless: "ISO_14495_1",
    JPEG2000: "ISO_15444_1",
    JPEG2000MC: "ISO_15444_2",
    HTJ2K: "ISO_15444_15",
}


class PixelEncodeError(Exception):
    """The redacted frames could not be written back."""


DCT_DOMAIN_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})


@dataclass(frozen=True)
class EncodingPlan:
    """How redacted pixels are written. ``max_pixel_bytes``: when the (lossless) target comes out
    bigger, the frames are written as irreversible JPEG 2000 of about ``input_pixel_bytes``."""

    transfer_syntax_out: UID
    input_was_lossy: bool
    note: str
    max_pixel_bytes: int | None = None
    input_pixel_bytes: int = 0
    new_lossy_step: bool = False


def _first_fragment(ds: Dataset) -> bytes:
    try:
        return next(generate_fragments(ds.PixelData))
    except (StopIteration, ValueError):
        return b""


def _j2k_is_reversible(codestream: bytes) -> bool:
    """True when the JPEG 2000 COD segment says 5-3 reversible wavelet (lossless capable)."""
    start = codestream.find(b"\xff\x52")  # COD marker
    # marker(2) Lcod(2) Scod(1) SGcod(4) then SPcod: levels, xcb, ycb, style, transformation
    offset = start + 13
    return bool(start >= 0 and len(codestream) > offset and codestream[offset] == 1)


def input_is_lossy(ds: Dataset, tsyntax: UID) -> bool:
    if tsyntax in (JPEG2000, JPEG2000MC):
        if str(ds.get("LossyImageCompression", "")).strip() == "01":
            return True
        return not _j2k_is_reversible(_first_fragment(ds))
    # a lossless container can still hold pixels that were lossy-compressed earlier; that
    # history is already in the header and is left as it is
    return tsyntax in LOSSY_SYNTAXES


def plan_encoding(ds: Dataset, tsyntax: UID, policy: PixelPolicy) -> EncodingPlan:
    """Pick the output transfer syntax for redacted pixels of an instance stored as ``tsyntax``."""
    lossy = input_is_lossy(ds, tsyntax)
    if tsyntax in WRITABLE_NATIVE_SYNTAXES:
        return EncodingPlan(tsyntax, False, "native: same transfer syntax")
    if tsyntax == ExplicitVRBigEndian:
        return EncodingPlan(ExplicitVRLittleEndian, False, "big endian (retired) written as Explicit VR Little Endian")
    if lossy:
        if policy.lossy_output == "jpeg-2000-lossless" and _encoder_available(JPEG2000Lossless):
            return EncodingPlan(JPEG2000Lossless, True, "lossy input written losslessly as JPEG 2000 Lossless")
        if policy.lossy_output == "compressed":
            lossless = next((t for t in (JPEGLSLossless, JPEG2000Lossless) if _encoder_available(t)), None)
            if lossless is not None:
                size = encapsulated_size(ds)
                note = f"lossy input re-encoded losslessly as {lossless.name}"
                return EncodingPlan(lossless, True, note, int(policy.max_growth * size) if size else None, size)
        note = "lossy input written as Explicit VR Little Endian (no second lossy step)"
        return EncodingPlan(ExplicitVRLittleEndian, True, note)
    if tsyntax in (JPEG2000, JPEG2000MC):
        # a reversible code stream in a "may be lossy" syntax: keep it lossless
        target = JPEG2000Lossless if _encoder_available(JPEG2000Lossless) else ExplicitVRLittleEndian
        return EncodingPlan(target, False, "reversible JPEG 2000 re-encoded losslessly")
    if tsyntax in REENCODABLE_LOSSLESS and _encoder_available(tsyntax):
        return EncodingPlan(tsyntax, False, "lossless: same transfer syntax")
    note = "lossless input without an encoder here: Explicit VR Little Endian"
    return EncodingPlan(ExplicitVRLittleEndian, False, note)


def _encoder_available(tsyntax: UID) -> bool:
    try:
        return bool(get_encoder(tsyntax).is_available)
    except NotImplementedError:
        return False


def encapsulated_size(ds: Dataset) -> int:
    """Bytes of compressed frame data in an encapsulated Pixel Data (0 when it is not)."""
    if "PixelData" not in ds:
        return 0
    try:
        return sum(len(f) for f in generate_fragments(ds.PixelData))
    except ValueError:
        return 0


def uncompressed_size(ds: Dataset) -> int:
    """Bytes the frames take uncompressed, from the header."""
    frames = max(int(ds.get("NumberOfFrames") or 1), 1)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits_allocated = int(ds.get("BitsAllocated") or 8)
    return frames * int(ds.Rows) * int(ds.Columns) * samples * bits_allocated // 8


def compression_ratio(ds: Dataset) -> float | None:
    """Uncompressed size over encapsulated size of the input, for Lossy Image Compression Ratio."""
    compressed = encapsulated_size(ds)
    return uncompressed_size(ds) / compressed if compressed > 0 else None


def record_lossy_history(ds: Dataset, tsyntax: UID) -> None:
    """Keep Lossy Image Compression "01" and its method/ratio true to the input's history.

    When the header already says "01" the input's lossy step is taken as recorded. Otherwise
    the step that produced this file is appended, keeping Method and Ratio the same length
    (PS3.3 C.7.6.1.1.5).
    """
    already_recorded = str(ds.get("LossyImageCompression", "")).strip() == "01"
    ds.LossyImageCompression = "01"
    method = LOSSY_METHOD.get(tsyntax)
    if already_recorded or method is None:
        return
    append_lossy_step(ds, method, compression_ratio(ds))


def append_lossy_step(ds: Dataset, method: str, ratio: float | None) -> None:
    """Add one lossy compression step to Method and Ratio, keeping the two the same length."""
    ds.LossyImageCompression = "01"
    methods = _values(ds, "LossyImageCompressionMethod")
    ratios = _values(ds, "LossyImageCompressionRatio")
    while len(ratios) < len(methods):
        ratios.append(ratios[-1] if ratios else "1")
    del ratios[len(methods) :]
    methods.append(method)
    ratios.append(f"{ratio:.2f}"[:16] if ratio else "1")  # DS: at most 16 characters
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]
    ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]


def _values(ds: Dataset, keyword: str) -> list[str]:
    if keyword not in ds or ds[keyword].value in (None, ""):
        return []
    value = ds[keyword].value
    if isinstance(value, (str, bytes, int, float)):
        return [str(value)]
    return [str(v) for v in value]


def write_frames(
    ds: Dataset,
    frames: np.ndarray,
    photometric: str,
    plan: EncodingPlan,
    input_photometric: str,
) -> EncodingPlan:
    """Replace PixelData with ``frames`` (frames, rows, columns[, 3]) encoded as planned.

    Updates Photometric Interpretation, Planar Configuration, Number of Frames, lengths and the
    Transfer Syntax UID; never the SOP Instance UID. Returns the plan actually carried out: when
    the planned (always lossless) encoder refuses these pixels - e.g. pydicom's RLE encoder and
    32-bit samples - the frames are written as Explicit VR Little Endian instead, still lossless.
    """
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            del ds[keyword]
    bits_allocated = int(ds.BitsAllocated)
    bits_stored = int(ds.get("BitsStored") or bits_allocated)
    if frames.dtype.kind == "u" and bits_stored < frames.dtype.itemsize * 8:
        # bits above Bits Stored are not pixel data (retired embedded overlays live there)
        frames &= np.array((1 << bits_stored) - 1, dtype=frames.dtype)
    samples = 3 if frames.ndim == 4 else 1
    keep_frame_axis = "NumberOfFrames" in ds or frames.shape[0] > 1
    arr = frames if keep_frame_axis else frames[0]

    target = plan.transfer_syntax_out
    out_photometric = photometric
    if target == JPEG2000Lossless and input_photometric == "YBR_RCT" and samples == 3:
        out_photometric = "YBR_RCT"  # the encoder applies the reversible colour transform

    ds.PhotometricInterpretation = out_photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if keep_frame_axis:
        ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel = samples
    ds.Rows, ds.Columns = frames.shape[1], frames.shape[2]

    if target.is_compressed:
        try:
            ds.compress(target, arr, generate_instance_uid=False)
            if plan.max_pixel_bytes is not None and encapsulated_size(ds) > plan.max_pixel_bytes:
                return _write_lossy_jpeg_2000(ds, arr, samples, plan, photometric)
            return plan
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            # compress() validates before it touches PixelData, so the dataset is unchanged
            log.info("%s encoder refused the frames (%s); writing native", target.name, type(exc).__name__)
            ds.PhotometricInterpretation = photometric
            target = ExplicitVRLittleEndian
            note = f"{plan.note}; encoder refused, Explicit VR Little Endian"
            plan = EncodingPlan(target, plan.input_was_lossy, note)

    if ds.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian:
        _convert_big_endian_elements(ds)
    if ds.file_meta.get("TransferSyntaxUID") != target:
        ds.file_meta.TransferSyntaxUID = target
    if bits_allocated == 1:
        packed = pack_bits(arr.astype(np.uint8), pad=True)
        _set_native(ds, packed, "OB")
    elif frames.dtype.itemsize in (1, 2):
        try:
            ds.set_pixel_data(arr, out_photometric, bits_stored, generate_instance_uid=False)
        except (ValueError, NotImplementedError, AttributeError) as exc:
            raise PixelEncodeError(f"cannot write native pixel data: {type(exc).__name__}") from exc
    else:
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        _set_native(ds, data, "OW")
    return plan


def _write_lossy_jpeg_2000(
    ds: Dataset, arr: np.ndarray, samples: int, plan: EncodingPlan, photometric: str
) -> EncodingPlan:
    """Lossless came out too big: irreversible JPEG 2000 at about the input's size, recorded as the
    new lossy step it is. When no JPEG 2000 encoder takes the frames, the lossless result stays."""
    lossless_size = encapsulated_size(ds)
    if not _encoder_available(JPEG2000) or plan.input_pixel_bytes <= 0:
        return replace(plan, note=f"{plan.note}; {lossless_size / plan.input_pixel_bytes:.1f}x the input")
    # OpenJPEG's rate counts the stored bits of each sample (12 of 16, say), not the container's
    bits_stored = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    ratio = max(arr.size * bits_stored / 8 / plan.input_pixel_bytes, 1.0)
    ds.PhotometricInterpretation = "YBR_ICT" if samples == 3 else photometric
    try:
        ds.compress(JPEG2000, arr, generate_instance_uid=False, j2k_cr=[ratio])
        if plan.max_pixel_bytes is not None and encapsulated_size(ds) > plan.max_pixel_bytes:
            # headers and rounding can still overshoot: aim once more
            ratio *= encapsulated_size(ds) / plan.input_pixel_bytes
            ds.compress(JPEG2000, arr, generate_instance_uid=False, j2k_cr=[ratio])
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        log.info("JPEG 2000 encoder refused the frames (%s); keeping the lossless encoding", type(exc).__name__)
        ds.PhotometricInterpretation = photometric
        return replace(plan, note=f"{plan.note}; {lossless_size / plan.input_pixel_bytes:.1f}x the input")
    append_lossy_step(ds, LOSSY_METHOD[JPEG2000], uncompressed_size(ds) / max(encapsulated_size(ds), 1))
    note = (
        f"lossy input: lossless re-encoding was {lossless_size / plan.input_pixel_bytes:.1f}x the input, "
        f"so irreversible JPEG 2000 at ratio {ratio:.1f} (a new lossy step, recorded)"
    )
    return replace(plan, transfer_syntax_out=JPEG2000, note=note, new_lossy_step=True)


def redact_jpeg_in_place(ds: Dataset, boxes: Sequence[RedactionBox]) -> EncodingPlan:
    """Blank the boxes in every JPEG Baseline/Extended frame in the DCT domain (see jpeg_blocks.py).

    Pixel Data is re-encapsulated frame for frame (a Basic Offset Table when there was one, an
    Extended Offset Table recomputed when there was one); the transfer syntax, Photometric
    Interpretation and the lossy history stay as they are, because no new lossy step happens.
    Raises JpegNotTranscodable, with the dataset unchanged, when any frame is refused.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    count = max(int(ds.get("NumberOfFrames") or 1), 1)
    if int(ds.get("PixelRepresentation") or 0) != 0:
        # black is the most negative value then, not the code stream's 0: leave it to the pixel path
        raise JpegNotTranscodable("signed samples")
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=count))
    except (ValueError, StopIteration) as exc:
        raise JpegNotTranscodable(f"frames cannot be split: {type(exc).__name__}") from None
    if len(frames) != count:
        raise JpegNotTranscodable(f"{len(frames)} frames where the header declares {count}")
    declared = (int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel") or 1))
    for frame in frames:
        # boxes are in the header's pixel coordinates: the code stream must be that size
        if tuple(jpeg_frame_size(frame) or ()) != declared:
            raise JpegNotTranscodable("a frame's code stream and the header disagree on its size")
    redacted = [redact_jpeg_frame(frame, boxes, photometric) for frame in frames]
    had_offsets = _has_basic_offset_table(ds.PixelData)
    if "ExtendedOffsetTable" in ds:
        data, offsets, lengths = encapsulate_extended(redacted)
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = offsets, lengths
    else:
        data = encapsulate(redacted, has_bot=had_offsets)
    ds.PixelData = data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    tsyntax = UID(ds.file_meta.TransferSyntaxUID)
    return EncodingPlan(tsyntax, True, "blocks under boxes filled in the DCT domain; other blocks untouched")


def _has_basic_offset_table(pixel_data: bytes) -> bool:
    """Whether the first item of encapsulated Pixel Data (the Basic Offset Table) has any entries."""
    return len(pixel_data) >= 8 and int.from_bytes(pixel_data[4:8], "little") > 0


_WORD_SIZE = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _convert_big_endian_elements(ds: Dataset) -> None:
    """Prepare a big-endian dataset to be written little endian.

    pydicom converts decoded numbers itself, but keeps OW/OL/OF/OD/OV values as raw bytes, so
    those are byte-swapped here (PixelData is replaced afterwards anyway).
    """
    for element in ds.iterall():  # iterating also decodes every raw element
        size = _WORD_SIZE.get(str(element.VR))
        if size and element.tag != 0x7FE00010 and isinstance(element.value, bytes) and element.value:
            swapped = np.frombuffer(element.value, dtype=f">u{size}").astype(f"<u{size}")
            element.value = swapped.tobytes()
    ds.set_original_encoding(False, True, ds.original_character_set)


def _set_native(ds: Dataset, data: bytes, vr: str) -> None:
    ds.PixelData = data if len(data) % 2 == 0 else data + b"\x00"
    element = ds["PixelData"]
    element.VR = vr
    element.is_undefined_length = False
