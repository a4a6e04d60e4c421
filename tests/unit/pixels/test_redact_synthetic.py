"""Synthetic burned-in text, every supported encoding: the text is gone, nothing else moved."""

from __future__ import annotations

import numpy as np
import pytest
from deidflow.pixels import PixelPolicy, make_detector, redact_burned_in_text
from pixel_testdata import (
    CT_IMAGE,
    MR_IMAGE,
    build_dataset,
    roundtrip,
    text_frames,
    to_jpeg_baseline,
    to_syntax,
    words_of,
)
from pydicom.pixels import pixel_array
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from scipy_free import dilate

SYNTAXES = {
    "native": ExplicitVRLittleEndian,
    "rle": RLELossless,
    "j2k-lossless": JPEG2000Lossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "jpeg-baseline": JPEGBaseline8Bit,
}
EXPECTED_OUTPUT = {
    ExplicitVRLittleEndian: ExplicitVRLittleEndian,
    RLELossless: RLELossless,
    JPEG2000Lossless: JPEG2000Lossless,
    JPEGLSLossless: JPEGLSLossless,
    JPEGBaseline8Bit: JPEGBaseline8Bit,  # blanked in the DCT domain: no second lossy step
}
# What blanking in the DCT domain may change beyond a box: the rest of its MCUs (16x8 for 4:2:2)
# and, through chroma upsampling, the pixels next to them.
MCU_REACH = 16


def all_frames(ds) -> np.ndarray:
    arr = pixel_array(ds)
    return arr if "NumberOfFrames" in ds else arr[None]


def as_rgb(frame: np.ndarray) -> np.ndarray:
    return frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)


def check_redaction(source, redacted, result, mask, words, reader, *, lossless: bool, reach: int = 0) -> None:
    before = all_frames(source)
    after = all_frames(roundtrip(redacted))  # what a reader of the written file gets
    assert after.shape == before.shape
    near_text = dilate(mask, 24)
    in_boxes = np.zeros(mask.shape, dtype=bool)
    for box in result.boxes:
        in_boxes[box.y0 : box.y1, box.x0 : box.x1] = True
    # a redactor that blanks everything would pass the other checks: keep it honest
    assert in_boxes.mean() < 0.15
    if reach:
        in_boxes = dilate(in_boxes, reach)
    for index in range(after.shape[0]):
        out = after[index]
        text_pixels = out[mask]
        gone = np.all(text_pixels == 0, axis=-1) if text_pixels.ndim == 2 else text_pixels == 0
        assert gone.mean() >= 0.99, f"frame {index}: {gone.mean():.4f} of text pixels blanked"
        # outside the boxes nothing changed at all: decoded input == decoded output
        assert np.array_equal(out[~in_boxes], before[index][~in_boxes])
        if lossless:
            assert np.array_equal(out[~near_text], before[index][~near_text])
        tokens = reader.tokens(as_rgb(out))
        joined = reader.joined(as_rgb(out))
        assert not (tokens & words), f"frame {index}: OCR still reads {sorted(tokens & words)}"
        assert not [w for w in words if w in joined]


@pytest.mark.parametrize("syntax_name", list(SYNTAXES))
@pytest.mark.parametrize("background", ["ultrasound", "flat"])
def test_single_frame_text_is_gone(syntax_name, background, local_detector, reader):
    frames, mask, texts = text_frames(1, background=background, seed=1)
    source = to_syntax(build_dataset(frames), SYNTAXES[syntax_name])
    redacted = roundtrip(source)
    result = redact_burned_in_text(redacted, PixelPolicy(), local_detector)

    dct_domain = syntax_name == "jpeg-baseline"
    assert result.scanned and result.redacted and result.reencoded != dct_domain
    assert result.transfer_syntax_out == EXPECTED_OUTPUT[SYNTAXES[syntax_name]]
    assert redacted.BurnedInAnnotation == "NO"
    assert redacted.PhotometricInterpretation == ("YBR_FULL_422" if dct_domain else "RGB")
    check_redaction(
        source,
        redacted,
        result,
        mask,
        words_of(texts),
        reader,
        lossless=syntax_name != "jpeg-baseline",
        reach=MCU_REACH if syntax_name == "jpeg-baseline" else 0,
    )


@pytest.mark.parametrize("syntax_name", ["native", "rle", "j2k-lossless", "jpeg-baseline"])
def test_multi_frame_every_frame_is_redacted(syntax_name, local_detector, reader):
    frames, mask, texts = text_frames(5, background="ultrasound", seed=2)
    source = to_syntax(build_dataset(frames), SYNTAXES[syntax_name])
    redacted = roundtrip(source)
    # sample every 3rd: frames 0, 2, 3, 4 detected, frame 1 is never looked at
    result = redact_burned_in_text(redacted, PixelPolicy(sample_every=3), local_detector)

    assert result.frames_scanned == (0, 2, 3, 4)
    assert result.frames_redacted == 5
    assert int(redacted.NumberOfFrames) == 5
    check_redaction(
        source,
        redacted,
        result,
        mask,
        words_of(texts),
        reader,
        lossless=syntax_name != "jpeg-baseline",
        reach=MCU_REACH if syntax_name == "jpeg-baseline" else 0,
    )


@pytest.mark.parametrize("syntax_name", ["native", "rle", "jpeg-baseline"])
def test_greyscale_multi_frame(syntax_name, local_detector, reader):
    frames, mask, texts = text_frames(3, background="ultrasound", seed=3)
    grey = frames.max(axis=-1)  # coloured captions become bright grey text
    source = to_syntax(build_dataset(grey, photometric="MONOCHROME2", burned_in="YES"), SYNTAXES[syntax_name])
    redacted = roundtrip(source)
    result = redact_burned_in_text(redacted, PixelPolicy(), local_detector)
    assert redacted.PhotometricInterpretation == "MONOCHROME2"
    check_redaction(
        source,
        redacted,
        result,
        mask,
        words_of(texts),
        reader,
        lossless=syntax_name != "jpeg-baseline",
        reach=MCU_REACH if syntax_name == "jpeg-baseline" else 0,
    )


def test_jpeg_input_stays_within_codec_tolerance_and_records_lossy_history(local_detector):
    frames, mask, _ = text_frames(1, background="ultrasound", seed=4)
    source = to_syntax(build_dataset(frames), JPEGBaseline8Bit)
    redacted = roundtrip(source)
    result = redact_burned_in_text(redacted, PixelPolicy(), local_detector)

    assert redacted.file_meta.TransferSyntaxUID == JPEGBaseline8Bit  # redacted in the DCT domain
    assert redacted.LossyImageCompression == "01"
    assert redacted.LossyImageCompressionMethod == "ISO_10918_1"  # the input's step, no new one
    assert float(redacted.LossyImageCompressionRatio) > 1.0
    out = all_frames(roundtrip(redacted))[0].astype(int)
    away = ~dilate(mask, 24)
    for box in result.boxes:
        away[box.y0 : box.y1, box.x0 : box.x1] = False
    # compared with the pixels before JPEG: only codec error remains away from the text
    assert np.abs(out[away] - frames[0][away].astype(int)).mean() < 4.0


def test_lossy_output_can_be_jpeg_2000_lossless(local_detector):
    frames, _, _ = text_frames(1, background="flat", seed=5)
    # progressive: the DCT-domain transcoder refuses it, so the lossy_output choice applies
    source = to_jpeg_baseline(build_dataset(frames), progressive=True)
    redacted = roundtrip(source)
    policy = PixelPolicy(lossy_output="jpeg-2000-lossless")
    result = redact_burned_in_text(redacted, policy, local_detector)
    assert result.transfer_syntax_out == JPEG2000Lossless
    assert redacted.LossyImageCompression == "01"
    decoded_in = all_frames(source)[0]
    decoded_out = all_frames(roundtrip(redacted))[0]
    untouched = np.ones(decoded_in.shape[:2], dtype=bool)
    for box in result.boxes:
        untouched[box.y0 : box.y1, box.x0 : box.x1] = False
    assert np.array_equal(decoded_out[untouched], decoded_in[untouched])


@pytest.mark.parametrize(("modality", "sop_class"), [("CT", CT_IMAGE), ("MR", MR_IMAGE)])
@pytest.mark.parametrize("burned_in", ["NO", None])
def test_ct_mr_without_text_are_byte_identical(modality, sop_class, burned_in, local_detector):
    rng = np.random.default_rng(7)
    body = rng.integers(0, 1200, size=(1, 256, 256), dtype=np.uint16)
    for syntax in (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless):
        ds = to_syntax(
            build_dataset(
                body,
                photometric="MONOCHROME2",
                modality=modality,
                sop_class=sop_class,
                burned_in=burned_in,
                bits_stored=12,
            ),
            syntax,
        )
        ds = roundtrip(ds)
        before = bytes(ds.PixelData)
        result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
        assert not result.scanned
        assert bytes(ds.PixelData) == before
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ("BurnedInAnnotation" in ds) == (burned_in is not None)


def test_scanned_but_nothing_found_keeps_pixel_data_byte_identical(local_detector):
    rng = np.random.default_rng(8)
    frames = np.repeat(rng.integers(0, 60, size=(2, 200, 300), dtype=np.uint8)[..., None], 3, axis=-1)
    ds = roundtrip(to_syntax(build_dataset(frames, burned_in="YES"), RLELossless))
    before = bytes(ds.PixelData)
    result = redact_burned_in_text(ds, PixelPolicy(), local_detector)
    assert result.scanned and not result.redacted and not result.boxes
    assert "no text found" in result.reason
    assert bytes(ds.PixelData) == before
    assert ds.BurnedInAnnotation == "YES"  # nobody redacted anything: the flag stays honest


def test_manual_and_signature_boxes_without_detector():
    frames, _, _ = text_frames(2, background="flat", seed=9)
    ds = roundtrip(build_dataset(frames, modality="OT", burned_in="NO"))
    policy = PixelPolicy(
        manual_boxes=((0, 0, 640, 30),),
        device_signatures=(
            {
                "name": "acme",
                "manufacturer": "acme",
                "model": "sonotest",
                "rows": 480,
                "columns": 640,
                "boxes": [[0, 430, 640, 480]],
            },
            {"name": "other", "manufacturer": "philips", "boxes": [[0, 0, 10, 10]]},
        ),
        margin=0,
    )
    result = redact_burned_in_text(ds, policy, make_detector("none"))
    assert result.scanned and result.redacted
    assert result.frames_scanned == ()
    sources = {box.source for box in result.boxes}
    assert sources == {"manual", "device-signature:acme"}
    out = all_frames(ds)
    assert not out[:, :30].any() and not out[:, 430:].any()
    assert np.array_equal(out[:, 30:430], frames[:, 30:430])


def test_never_mode_leaves_pixels_but_removes_overlays():
    frames, _, _ = text_frames(1, background="flat", seed=10)
    ds = build_dataset(frames, burned_in="YES")
    ds.add_new(0x60000010, "US", 480)
    ds.add_new(0x60003000, "OW", b"\x00" * 2)
    before = bytes(ds.PixelData)
    result = redact_burned_in_text(ds, PixelPolicy(mode="never"), make_detector("none"))
    assert not result.scanned and result.overlays_removed == 1
    assert 0x60003000 not in ds and bytes(ds.PixelData) == before


def test_redaction_is_deterministic_and_reports_no_phi(local_detector):
    # at-least-once delivery reruns steps: the same input must give the same bytes
    import json

    frames, _, _ = text_frames(2, background="ultrasound", seed=13)
    source = to_syntax(build_dataset(frames), RLELossless)
    first, second = roundtrip(source), roundtrip(source)
    result = redact_burned_in_text(first, PixelPolicy(), local_detector)
    redact_burned_in_text(second, PixelPolicy(), local_detector)
    assert bytes(first.PixelData) == bytes(second.PixelData)
    report = json.dumps(result.as_dict())
    assert "DOE" not in report and "ACME" not in report.upper()
    # a second pass over redacted output finds nothing more and leaves the bytes alone
    again = roundtrip(first)
    before = bytes(again.PixelData)
    assert not redact_burned_in_text(again, PixelPolicy(), local_detector).redacted
    assert bytes(again.PixelData) == before
