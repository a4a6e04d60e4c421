"""Rendering for detection, re-encoding choices, overlays and icons."""

from __future__ import annotations

import numpy as np
import pytest
from deidflow.pixels import (
    PixelDecodeError,
    PixelPolicy,
    decode_frame,
    plan_encoding,
    redact_burned_in_text,
    remove_overlays_and_icons,
    render_for_detection,
)
from deidflow.pixels.encode import input_is_lossy
from pixel_testdata import build_dataset, roundtrip, text_frames, to_syntax
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)


def test_monochrome1_is_inverted_and_16_bit_windowed():
    values = np.full((1, 64, 64), 1000, dtype=np.uint16)
    values[0, 10:20, 10:40] = 3000  # "text" brighter than the body
    ds = build_dataset(values, photometric="MONOCHROME2", modality="CR", bits_stored=12)
    ds.WindowCenter, ds.WindowWidth = 2000, 2000
    frame, photometric = decode_frame(ds, 0)
    shown = render_for_detection(frame, ds, photometric)
    assert shown.shape == (64, 64, 3) and shown.dtype == np.uint8
    assert shown[15, 20, 0] == 255 and shown[40, 40, 0] == 0
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = render_for_detection(frame, ds, "MONOCHROME1")
    assert inverted[15, 20, 0] == 0 and inverted[40, 40, 0] == 255


def test_palette_ybr_and_rgb_render_to_rgb8():
    for name in ("examples_palette.dcm", "examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm"):
        ds = dcmread(get_testdata_file(name))
        frame, photometric = decode_frame(ds, 0)
        shown = render_for_detection(frame, ds, photometric)
        assert shown.dtype == np.uint8 and shown.shape == (int(ds.Rows), int(ds.Columns), 3)
        assert shown.std() > 10  # an image, not a flat field


@pytest.mark.parametrize(
    ("syntax", "expected"),
    [
        (ExplicitVRLittleEndian, ExplicitVRLittleEndian),
        (ExplicitVRBigEndian, ExplicitVRLittleEndian),
        (RLELossless, RLELossless),
        (JPEGLSLossless, JPEGLSLossless),
        (JPEG2000Lossless, JPEG2000Lossless),
        (JPEGLosslessSV1, ExplicitVRLittleEndian),
        # lossy input the DCT-domain path did not take: lossless and compressed by default
        (JPEGBaseline8Bit, JPEGLSLossless),
        (JPEGLSNearLossless, JPEGLSLossless),
    ],
)
def test_encoding_plan(syntax, expected):
    plan = plan_encoding(Dataset(), syntax, PixelPolicy())
    assert plan.transfer_syntax_out == expected
    assert plan.note


@pytest.mark.parametrize(
    ("lossy_output", "expected"),
    [
        ("explicit-vr-little-endian", ExplicitVRLittleEndian),
        ("jpeg-2000-lossless", JPEG2000Lossless),
        ("compressed", JPEGLSLossless),
    ],
)
def test_encoding_plan_for_lossy_input_follows_the_policy(lossy_output, expected):
    plan = plan_encoding(Dataset(), JPEGLSNearLossless, PixelPolicy(lossy_output=lossy_output))
    assert plan.transfer_syntax_out == expected and plan.input_was_lossy


def test_jpeg_2000_reversibility_is_read_from_the_code_stream():
    reversible = dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    irreversible = dcmread(get_testdata_file("693_J2KI.dcm"))
    assert not input_is_lossy(reversible, JPEG2000Lossless)
    assert input_is_lossy(irreversible, JPEG2000)
    assert plan_encoding(irreversible, JPEG2000, PixelPolicy()).input_was_lossy


@pytest.mark.parametrize(
    "name",
    [
        "MR_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "JPGExtended.dcm",
        "SC_rgb_rle_16bit_2frame.dcm",
        "image_dfl.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "JPEGLSNearLossless_08.dcm",
        "liver_1frame.dcm",
        "rtdose_1frame.dcm",
        "rtdose_rle.dcm",
        "SC_rgb_rle_32bit_2frame.dcm",
    ],
)
def test_every_syntax_is_redacted_and_written_validly(name):
    ds = dcmread(get_testdata_file(name))
    before = pixel_array(dcmread(get_testdata_file(name)))
    policy = PixelPolicy(mode="always", detector="none", manual_boxes=((0, 0, 8, 6),), margin=0)
    result = redact_burned_in_text(ds, policy)
    assert result.redacted
    after = pixel_array(roundtrip(ds))
    assert after.shape == before.shape
    blank = after[..., :6, :8, :] if int(ds.SamplesPerPixel) == 3 else after[..., :6, :8]
    assert np.all(blank == blank.reshape(-1)[0])
    rest = (slice(None),) * (after.ndim - (3 if int(ds.SamplesPerPixel) == 3 else 2))
    original_photometric = str(dcmread(get_testdata_file(name)).PhotometricInterpretation)
    dct_domain = result.transfer_syntax_in in (JPEGBaseline8Bit, "1.2.840.10008.1.2.4.51")
    if dct_domain and not result.reencoded:
        # whole MCUs blanked (up to 16x16), every other block untouched: rows below them as before
        assert np.array_equal(after[(*rest, slice(32, None))], before[(*rest, slice(32, None))])
    if not dct_domain and "YBR" not in original_photometric:
        # lossless paths: the rest of the frame is exactly what was decoded before
        assert np.array_equal(after[(*rest, slice(6, None))], before[(*rest, slice(6, None))])
    if result.transfer_syntax_in in (JPEGBaseline8Bit, "1.2.840.10008.1.2.4.51"):
        assert ds.LossyImageCompression == "01"
    assert "ExtendedOffsetTable" not in ds
    assert ds.SOPInstanceUID == dcmread(get_testdata_file(name)).SOPInstanceUID


def test_undecodable_pixel_data_raises_for_quarantine():
    # pydicom's known-bad 12-bit JPEG: no installed plugin decodes it
    ds = dcmread(get_testdata_file("JPEG-lossy.dcm"))
    with pytest.raises(PixelDecodeError):
        redact_burned_in_text(ds, PixelPolicy(mode="always", detector="none", manual_boxes=((0, 0, 2, 2),)))


def test_unsupported_pixel_data_raises_for_quarantine():
    ds = build_dataset(np.zeros((1, 8, 8), dtype=np.uint8), photometric="MONOCHROME2", burned_in="YES")
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2: no decoder here
    with pytest.raises(PixelDecodeError):
        redact_burned_in_text(ds, PixelPolicy(manual_boxes=((0, 0, 2, 2),)))


def test_overlays_and_nested_icons_are_removed():
    ds = dcmread(get_testdata_file("examples_overlay.dcm"))
    assert "IconImageSequence" in ds and 0x60003000 in ds
    item = Dataset()
    item.IconImageSequence = Sequence([Dataset()])
    item.add_new(0x60020010, "US", 8)
    ds.ReferencedImageSequence = Sequence([item])
    overlays, icons = remove_overlays_and_icons(ds)
    assert (overlays, icons) == (2, 2)
    assert not [e for e in ds.iterall() if 0x6000 <= e.tag.group <= 0x601E]
    assert "IconImageSequence" not in ds and "IconImageSequence" not in ds.ReferencedImageSequence[0]


def test_retired_bits_above_bits_stored_are_cleared_when_rewritten():
    values = np.full((1, 32, 32), 0x0123, dtype=np.uint16)
    values[0, 0, :] |= 0x8000  # an embedded overlay bit above Bits Stored (12)
    ds = build_dataset(values.copy(), photometric="MONOCHROME2", modality="OT", bits_stored=16)
    ds.BitsStored, ds.HighBit = 12, 11
    policy = PixelPolicy(mode="always", manual_boxes=((20, 20, 30, 30),), margin=0)
    redact_burned_in_text(ds, policy)
    after = pixel_array(roundtrip(ds))
    assert after.max() <= 0x0FFF


def test_native_implicit_and_deflated_keep_their_syntax():
    frames, _, _ = text_frames(1, rows=120, columns=160, background="flat")
    for name in ("image_dfl.dcm",):
        ds = dcmread(get_testdata_file(name))
        tsyntax = ds.file_meta.TransferSyntaxUID
        redact_burned_in_text(ds, PixelPolicy(mode="always", manual_boxes=((0, 0, 4, 4),)))
        assert roundtrip(ds).file_meta.TransferSyntaxUID == tsyntax
    ds = to_syntax(build_dataset(frames), ExplicitVRLittleEndian)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    redact_burned_in_text(ds, PixelPolicy(mode="always", manual_boxes=((0, 0, 4, 4),)))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
