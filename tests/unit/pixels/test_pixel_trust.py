"""Pixels that cannot be trusted are a rejection, never "no text found".

A scan vouches for what it looked at; that must be what a viewer shows. Damaged streams that one
decoder refuses and another turns into noise, headers that declare another size than the frames
hold, and overlays hidden in the pixels' unused bits would each let a name out under a clean scan.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from deidflow.engine import Engine
from deidflow.intake import Rejected
from deidflow.rules import load_rules_text
from deidflow.testing.synthetic import STAFF, make_burned_in_ultrasound, make_corpus
from pixel_testdata import roundtrip, to_jpeg_baseline
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEGLSLossless, RLELossless

KEY = bytes(range(32))


def _engine(rules: str = "") -> Engine:
    return Engine(load_rules_text("deidflow_rules: 1\n" + rules, "test-rules.yaml"), KEY)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def _rejected(data: bytes, rules: str = "", engine: Engine | None = None) -> Rejected:
    with pytest.raises(Rejected) as caught:
        (engine or _engine(rules)).process(data)
    return caught.value


def _with_frame(ds: pydicom.Dataset, frame: bytes) -> pydicom.Dataset:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].is_undefined_length = True
    return ds


def test_a_damaged_jpeg_ls_stream_that_one_decoder_turns_into_noise_is_rejected():
    ds, _, _ = make_burned_in_ultrasound(seed=3)
    ds.compress(JPEGLSLossless, generate_instance_uid=False)
    ds = roundtrip(ds)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    # Flip bytes until CharLS refuses the stream while another decoder still returns pixels:
    # pydicom then falls back to that decoder, and a scan would look at noise.
    for offset in range(len(frame) // 3, len(frame) * 2 // 3, 97):
        damaged = bytearray(frame)
        damaged[offset] ^= 0x5A
        candidate = _with_frame(roundtrip(ds), bytes(damaged))
        try:
            candidate.pixel_array  # noqa: B018 - pydicom's default decode, with its fallback
        except Exception:  # noqa: BLE001 - every decoder refuses this one: try another byte
            continue
        try:
            from pydicom.pixels import get_decoder

            get_decoder(JPEGLSLossless).as_array(candidate, index=0, decoding_plugin="pyjpegls")
        except Exception:  # noqa: BLE001 - CharLS refuses it: this is the case
            break
    else:
        pytest.fail("no damaged stream found that CharLS refuses and pydicom still decodes")
    assert _rejected(_bytes(candidate)).reason == "pixels_untrusted"


def test_rows_set_to_one_on_a_jpeg_is_rejected():
    ds, _, _ = make_burned_in_ultrasound(seed=4)
    jpeg = to_jpeg_baseline(ds)
    jpeg.Rows = 1  # the frame still holds 320 x 240: a scan would look at one line
    rejected = _rejected(_bytes(jpeg))
    assert rejected.reason == "pixel_data_mismatch"
    assert "320x240x3 in its codestream, 320x1x3 in the header" in rejected.detail


def test_rows_set_to_one_on_rle_is_rejected():
    ds, _, _ = make_burned_in_ultrasound(seed=5)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds = roundtrip(ds)
    ds.Rows = 1  # RLE frames declare no size; pydicom's decoder returns the first line quietly
    assert _rejected(_bytes(ds)).reason == "pixels_untrusted"


def test_rle_segments_that_do_not_fit_the_samples_are_rejected():
    ds, _, _ = make_burned_in_ultrasound(seed=5)
    ds.compress(RLELossless, generate_instance_uid=False)
    ds = roundtrip(ds)
    ds.BitsAllocated = ds.BitsStored = 16  # three segments, where 16-bit RGB needs six
    ds.HighBit = 15
    rejected = _rejected(_bytes(ds))
    assert rejected.reason == "pixel_data_mismatch" and "RLE segments" in rejected.detail


def test_decoding_past_the_limit_is_refused_before_anything_is_decoded():
    ds, _, _ = make_burned_in_ultrasound(seed=6)
    assert _rejected(_bytes(ds), "accept:\n  max_decoded_mb: 0.1\n").reason == "too_large"


def _ct_with_embedded_overlay(bit: int = 14) -> tuple[pydicom.Dataset, np.ndarray, np.ndarray]:
    corpus = make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1)
    ds = corpus.instances[0].dataset
    pixels = np.frombuffer(ds.PixelData, dtype="<u2").reshape(64, 64).copy() & 0x0FFF
    bitmap = np.zeros((64, 64), dtype=bool)
    bitmap[20:30, 5:60] = True  # a caption, drawn into bit 14 of each pixel
    ds.PixelData = (pixels | (bitmap.astype(np.uint16) << bit)).tobytes()
    del ds[0x60003000]  # no Overlay Data: the bitmap lives in the pixels
    ds[0x60000100].value = 16  # Overlay Bits Allocated
    ds[0x60000102].value = bit  # Overlay Bit Position
    return ds, pixels, bitmap


def test_an_overlay_embedded_in_the_unused_bits_is_cleared():
    ds, pixels, _ = _ct_with_embedded_overlay()
    out = pydicom.dcmread(io.BytesIO(_engine().process(_bytes(ds)).data))
    after = np.frombuffer(out.PixelData, dtype="<u2").reshape(64, 64)
    assert not (after & (1 << 14)).any(), "the embedded bitmap is gone"
    assert np.array_equal(after, pixels), "and nothing else changed"
    assert not any(tag >> 16 == 0x6000 for tag in out.keys())


def test_an_overlay_kept_by_clean_graphics_keeps_its_bits():
    ds, _, bitmap = _ct_with_embedded_overlay()
    rules = "profile:\n  options:\n    clean_graphics: true\n"
    out = pydicom.dcmread(io.BytesIO(_engine(rules).process(_bytes(ds)).data))
    after = np.frombuffer(out.PixelData, dtype="<u2").reshape(64, 64)
    assert np.array_equal((after >> 14).astype(bool), bitmap)


def test_an_embedded_overlay_in_compressed_pixels_is_rejected():
    ds, _, _ = _ct_with_embedded_overlay()
    ds.compress(RLELossless, generate_instance_uid=False)
    rejected = _rejected(_bytes(ds))
    assert rejected.reason == "pixels_failed"
    assert STAFF["institution"] not in str(rejected)
