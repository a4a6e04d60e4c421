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
* Lossy input (JPEG Baseline/Extended, JPEG-LS Near-Lossless, irreversible JPEG 2000, HTJ2K)
  is written *without a second lossy step*: by default Explicit VR Little Endian, or JPEG 2000
  Lossless when the policy asks (smaller files, same pixels). The decoded pixels are exactly
  what a viewer showed before, except the redacted boxes. Lossy Image Compression stays "01";
  when the header had not recorded the original lossy step, Method (ISO_10918_1, ISO_14495_1,
  ISO_15444_1, ISO_15444_15) and Ratio (uncompressed size / compressed size) are added for it.
  No new ratio is appended because no new lossy step happened.
* YCbCr input is decoded to RGB and written as RGB (PlanarConfiguration 0), except JPEG 2000
  Lossless YBR_RCT which is re-encoded as YBR_RCT. SOP Instance UID is never changed here:
  UIDs belong to the pseudonymisation step, which must stay deterministic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset
from pydicom.encaps import generate_fragments
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


@dataclass(frozen=True)
class EncodingPlan:
    transfer_syntax_out: UID
    input_was_lossy: bool
    note: str


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


def compression_ratio(ds: Dataset, frames: np.ndarray) -> float | None:
    """Uncompressed size over encapsulated size of the input, for Lossy Image Compression Ratio."""
    try:
        compressed = sum(len(f) for f in generate_fragments(ds.PixelData))
    except ValueError:
        return None
    if compressed <= 0:
        return None
    bits_allocated = int(ds.get("BitsAllocated") or frames.dtype.itemsize * 8)
    uncompressed = frames.size * bits_allocated / 8
    return uncompressed / compressed


def record_lossy_history(ds: Dataset, tsyntax: UID, frames: np.ndarray) -> None:
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
    methods = _values(ds, "LossyImageCompressionMethod")
    ratios = _values(ds, "LossyImageCompressionRatio")
    while len(ratios) < len(methods):
        ratios.append(ratios[-1] if ratios else "1")
    ratio = compression_ratio(ds, frames)
    methods.append(method)
    ratios.append(f"{ratio:.2f}" if ratio else "1")
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
