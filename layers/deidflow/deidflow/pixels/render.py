"""Decode frames and render them to 8-bit RGB for text detection.

Two views of a frame exist here and they must not be confused:

* the *stored* frame, as decoded by pydicom (YCbCr already converted to RGB): this is what gets
  redacted and re-encoded, so redaction never changes the meaning of the pixel values;
* the *rendered* frame, 8-bit RGB as a viewer would show it (modality LUT, VOI window,
  MONOCHROME1 inverted, palette applied): this is what detectors see, because burned-in text was
  made to be read on screen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    convert_color_space,
    get_decoder,
)
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

log = logging.getLogger(__name__)

YBR_INTERPRETATIONS = frozenset(
    {"YBR_FULL", "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT"}
)


class PixelDecodeError(Exception):
    """The pixel data cannot be decoded or is of a kind this package does not redact."""


class PixelsTooLarge(PixelDecodeError):
    """Decoding the pixels would take more memory than the limit allows."""


class PixelsUntrusted(PixelDecodeError):
    """The pixels decode, but not to something a scan can vouch for: the decoders available
    disagree, one of them cannot decode what another did, or the compressed frames are not the
    size the header declares. "No text found" in such pixels would mean nothing."""


def transfer_syntax_of(ds: Dataset) -> UID:
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if not tsyntax:
        # datasets built in memory often lack file meta; pydicom itself assumes this
        return ExplicitVRLittleEndian
    return UID(tsyntax)


def number_of_frames(ds: Dataset) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def check_redactable(ds: Dataset, max_decoded_bytes: int | None = None) -> None:
    """Raise PixelDecodeError for pixel data this package cannot redact safely, and, before
    anything is decoded, when decoding would take more than `max_decoded_bytes`. (That compressed
    frames are the size the header declares, intake has checked.)"""
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise PixelDecodeError("float pixel data is not supported for redaction")
    if "PixelData" not in ds:
        raise PixelDecodeError("no PixelData")
    bits_allocated = int(ds.get("BitsAllocated") or 0)
    if bits_allocated not in (1, 8, 16, 32):
        raise PixelDecodeError(f"BitsAllocated {bits_allocated} is not supported")
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    frames = number_of_frames(ds)
    decoded = frames * rows * columns * samples * max(1, bits_allocated // 8)
    if max_decoded_bytes is not None and decoded > max_decoded_bytes:
        raise PixelsTooLarge(
            f"decoding {frames} frame(s) of {columns}x{rows}x{samples} takes {decoded} bytes, "
            f"over the {max_decoded_bytes} byte limit"
        )
    decoder = _decoder_for(ds)
    if not decoder.is_available:
        raise PixelDecodeError(f"no decoder available for transfer syntax {transfer_syntax_of(ds).name}")


def _decoder_for(ds: Dataset) -> Any:  # pydicom's Decoder class is not public API
    try:
        return get_decoder(transfer_syntax_of(ds))
    except NotImplementedError as exc:  # unknown / unsupported transfer syntax
        raise PixelDecodeError(str(exc)) from exc


def decode_frame(ds: Dataset, index: int) -> tuple[np.ndarray, str]:
    """Decode one stored frame; return it and its photometric interpretation after decoding.

    YCbCr is converted to RGB (``as_rgb=True``) so the redaction fill and the re-encoding work
    in one colour space; the returned interpretation is then "RGB".

    A compressed frame is decoded by every decoding plugin installed, and they must agree.
    pydicom falls back from a plugin that fails to the next one: CharLS rejects a damaged
    JPEG-LS stream that another decoder turns into noise, in which burned-in text is half
    legible to a person and invisible to a detector. What is scanned must be what viewers show.
    """
    decoder = _decoder_for(ds)
    plugins = list(getattr(decoder, "available_plugins", ()) or ())
    if len(plugins) < 2 or transfer_syntax_of(ds) not in _INDEPENDENT_DECODERS:
        return _decode_with(decoder, ds, index, None)
    # What pydicom decodes by default is what is scanned and redacted; every plugin must agree.
    arr, photometric = _decode_with(decoder, ds, index, None)
    largest, mean = _agreement_tolerance(ds)
    for plugin in plugins:
        try:
            other, _ = _decode_with(decoder, ds, index, plugin)
        except PixelDecodeError as exc:
            if _UNSUPPORTED in str(exc):
                continue  # this plugin does not handle this kind of image at all (e.g. 12-bit JPEG)
            raise PixelsUntrusted(f"frame {index}: {plugin} cannot decode what another plugin decodes") from None
        if other.shape != arr.shape:
            raise PixelsUntrusted(f"frame {index}: {plugin} decodes it to another size")
        difference = np.abs(arr.astype(np.int64) - other.astype(np.int64))
        if difference.size and (difference.max() > largest or difference.mean() > mean):
            raise PixelsUntrusted(f"frame {index}: {plugin} decodes it to other pixels")
    return arr, photometric


# What pydicom's plugins say when an image is outside what they implement (not damage).
_UNSUPPORTED = "does not support"
# Syntaxes whose installed plugins are independent implementations (libjpeg-turbo in Pillow and
# Richter's libjpeg in pylibjpeg; CharLS and libjpeg; pydicom's RLE and pylibjpeg-rle), so that
# their agreement means something. Both JPEG 2000 plugins are OpenJPEG: one decode is all there is.
_INDEPENDENT_DECODERS = frozenset(
    {
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    }
)
_LOSSY_DCT = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})


def _agreement_tolerance(ds: Dataset) -> tuple[float, float]:
    """(largest, mean) difference two correct decoders may show. Lossless codecs decode exactly.
    JPEG leaves each decoder its own IDCT rounding and chroma upsampling: measured on real and
    synthetic files, at most 15 levels in 8 bits (at sharp colour edges, 4:2:2) and 0.12 on
    average; a stream one decoder misreads differs by far more over whole blocks."""
    if transfer_syntax_of(ds) not in _LOSSY_DCT:
        return 0, 0
    scale = 1 << max(int(ds.get("BitsStored") or 8) - 8, 0)
    return 48 * scale, 1.0 * scale


def _decode_with(decoder: Any, ds: Dataset, index: int, plugin: str | None) -> tuple[np.ndarray, str]:
    options: dict[str, Any] = {"decoding_plugin": plugin} if plugin else {}
    try:
        arr, meta = decoder.as_array(ds, index=index, as_rgb=True, **options)
    except Exception as exc:  # noqa: BLE001 - decoders raise many types; the caller quarantines on this
        raise PixelDecodeError(f"cannot decode frame {index}: {type(exc).__name__}: {exc}") from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        raise PixelDecodeError(f"cannot decode frame {index}: {type(exc).__name__}") from None
    return arr, str(meta["photometric_interpretation"])


def iter_decoded_frames(ds: Dataset, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray, str]]:
    """Yield (frame index, stored frame, photometric interpretation) for the given frames."""
    wanted = range(number_of_frames(ds)) if indices is None else indices
    for index in wanted:
        arr, photometric = decode_frame(ds, index)
        yield index, arr, photometric


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _has_voi(ds: Dataset) -> bool:
    return "WindowCenter" in ds or "VOILUTSequence" in ds


def _has_modality_transform(ds: Dataset) -> bool:
    return "RescaleSlope" in ds or "RescaleIntercept" in ds or "ModalityLUTSequence" in ds


def render_monochrome(frame: np.ndarray, ds: Dataset, photometric: str, index: int = 0) -> np.ndarray:
    """Grey frame -> 8-bit grey, as displayed: modality LUT, then VOI (window or LUT)."""
    bits_stored = int(ds.get("BitsStored") or frame.dtype.itemsize * 8)
    if bits_stored <= 8 and frame.dtype == np.uint8 and not _has_voi(ds) and not _has_modality_transform(ds):
        grey = frame
    else:
        values = apply_modality_lut(frame, ds) if _has_modality_transform(ds) else frame
        if _has_voi(ds):
            try:
                values = apply_voi_lut(values, ds, index=index)
            except (ValueError, TypeError, IndexError, KeyError, AttributeError):
                # malformed window/LUT values: the full range still shows the text
                log.debug("VOI LUT not applicable, rendering the full range")
        values = np.asarray(values)
        # Scale what is actually there: text is usually the brightest thing in the frame and a
        # fixed range would make low-contrast captions vanish.
        grey = _scale_to_uint8(values, float(values.min()), float(values.max()))
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def render_for_detection(frame: np.ndarray, ds: Dataset, photometric: str, index: int = 0) -> np.ndarray:
    """Render a stored frame (as from ``decode_frame``) to a contiguous (rows, columns, 3) uint8 RGB."""
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        grey = render_monochrome(frame, ds, photometric, index)
        rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    elif photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        if rgb.dtype != np.uint8:
            # LUT entries are 16-bit even when the palette is 8-bit in spirit
            rgb = (rgb >> 8).astype(np.uint8) if rgb.max() > 255 else rgb.astype(np.uint8)
    elif photometric == "RGB" or photometric in YBR_INTERPRETATIONS:
        rgb = frame
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            # Decoders hand back RGB when asked (as_rgb=True); this covers any they left alone.
            rgb = convert_color_space(frame, photometric, "RGB")
        elif photometric != "RGB":
            raise PixelDecodeError(f"photometric interpretation {photometric!r} left undecoded")
        if rgb.dtype != np.uint8:
            bits_stored = int(ds.get("BitsStored") or rgb.dtype.itemsize * 8)
            rgb = _scale_to_uint8(rgb, 0.0, float(2**bits_stored - 1))
    else:
        raise PixelDecodeError(f"photometric interpretation {photometric!r} is not supported")
    return np.ascontiguousarray(rgb, dtype=np.uint8)
