"""Real burned-in text: deid-data ultrasounds and pydicom's bundled test files.

For each file the OCR judge reads the words first; after redaction none of them may be read
again, on detected and on never-detected frames alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from deidflow.pixels import (
    PixelPolicy,
    decode_frame,
    redact_burned_in_text,
    render_for_detection,
)
from pixel_testdata import roundtrip
from pydicom import dcmread


def deid_data_file(name: str) -> Path:
    data = pytest.importorskip("deid_data.data")
    path = Path(data.get_dataset("ultrasounds")) / name
    if not path.exists():
        pytest.skip(f"deid-data lacks {name}")
    return path


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if not path or not os.path.exists(path):
        pytest.skip(f"pydicom test file {name} not available offline")
    return Path(path)


def rendered(ds, index: int) -> np.ndarray:
    frame, photometric = decode_frame(ds, index)
    return render_for_detection(frame, ds, photometric, index)


def assert_words_unreadable(path: Path, frames_to_check: list[int], reader, detector) -> None:
    original = dcmread(path)
    words = {index: reader.tokens(rendered(original, index)) for index in frames_to_check}
    assert any(words.values()), "the OCR judge should read something before redaction"

    ds = dcmread(path)
    result = redact_burned_in_text(ds, PixelPolicy(), detector)
    assert result.scanned and result.redacted
    assert ds.BurnedInAnnotation == "NO"
    written = roundtrip(ds)
    for index in frames_to_check:
        image = rendered(written, index)
        still_read = reader.tokens(image) & words[index]
        joined = reader.joined(image)
        assert not still_read, f"frame {index}: still readable: {len(still_read)} word(s)"
        assert not [w for w in words[index] if len(w) >= 4 and w in joined]


@pytest.mark.parametrize("name", ["GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm"])
def test_deid_data_ultrasound_images(name, reader, local_detector):
    assert_words_unreadable(deid_data_file(name), [0], reader, local_detector)


@pytest.mark.slow
def test_deid_data_multiframe_ultrasound(reader, local_detector):
    # 30 RGB frames of 800x600; frame 5 is never given to the detector (sampling 0,10,14,20,29)
    assert_words_unreadable(deid_data_file("ultrasound-multiframe.dcm"), [0, 5, 29], reader, local_detector)


@pytest.mark.parametrize(
    ("name", "frames"),
    [
        ("examples_jpeg2k.dcm", [0]),  # US, JPEG 2000 lossless YBR_RCT, institution name
        ("examples_rgb_color.dcm", [0]),  # US, RGB, same screen at 320x240
        ("examples_palette.dcm", [0]),  # US, PALETTE COLOR
        ("examples_ybr_color.dcm", [0, 7, 29]),  # US cine, JPEG baseline YBR_FULL_422
        ("GDCMJ2K_TextGBR.dcm", [0]),  # SC, JPEG 2000 lossless, words in colour
    ],
)
def test_pydicom_files_with_burned_in_text(name, frames, reader, local_detector):
    assert_words_unreadable(pydicom_file(name), frames, reader, local_detector)


def test_pydicom_jpeg2k_keeps_lossless_syntax_and_ybr_rct(local_detector):
    ds = dcmread(pydicom_file("examples_jpeg2k.dcm"))
    before = decode_frame(ds, 0)[0]
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert result.transfer_syntax_out == "1.2.840.10008.1.2.4.90"
    assert ds.PhotometricInterpretation == "YBR_RCT"
    after = decode_frame(roundtrip(ds), 0)[0]
    untouched = np.ones(after.shape[:2], dtype=bool)
    for box in result.boxes:
        untouched[box.y0 : box.y1, box.x0 : box.x1] = False
    assert np.array_equal(after[untouched], before[untouched])


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "693_J2KI.dcm"]
)
def test_pydicom_ct_mr_untouched(name, local_detector):
    ds = dcmread(pydicom_file(name))
    before = bytes(ds.PixelData)
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert not result.scanned
    assert bytes(ds.PixelData) == before
