"""The local offline detector finds text in many fonts, sizes and colours; the others behave."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from deidflow.pixels import DetectorUnavailable, NoDetector, RedactionBox, detect_text, make_detector
from deidflow.pixels.detectors import TesseractDetector, iter_tiles
from pixel_testdata import TextSpec, text_frames

MANY_FONTS = (
    TextSpec("JONES MARY", 10, 8, "pil-bitmap", 11, (255, 255, 255)),
    TextSpec("1975-12-31", 200, 8, "aileron", 10, (255, 255, 0)),
    TextSpec("ST MUNGO", 400, 8, "aileron", 36, (0, 255, 0)),
    TextSpec("ID 99812", 10, 70, "hershey-plain", 10, (0, 255, 255)),
    TextSpec("WARD 7B", 10, 120, "hershey-simplex", 4, (255, 128, 0)),
    TextSpec("DR WHO", 480, 120, "hershey-duplex", 7, (255, 255, 255)),
    TextSpec("KIDNEY L", 250, 220, "hershey-complex", 6, (255, 0, 255)),
    TextSpec("08:48:26", 10, 420, "aileron", 14, (128, 128, 255)),
    TextSpec("RENAL", 520, 440, "aileron", 24, (160, 160, 160)),
)


def covered_fraction(boxes: list[RedactionBox], mask: np.ndarray, margin: int = 4) -> float:
    covered = np.zeros_like(mask)
    for box in boxes:
        padded = box.padded(margin).clipped(mask.shape[1], mask.shape[0])
        covered[padded.y0 : padded.y1, padded.x0 : padded.x1] = True
    return float((covered & mask).sum() / mask.sum())


@pytest.mark.parametrize("background", ["ultrasound", "flat"])
def test_local_detector_finds_many_fonts_sizes_and_colours(background, local_detector):
    texts = MANY_FONTS
    if background == "flat":  # dark ink on a light page
        texts = tuple(TextSpec(t.text, t.x, t.y, t.font, t.size, tuple(c // 3 for c in t.color)) for t in texts)
    frames, mask, _ = text_frames(1, background=background, texts=texts, seed=11)
    boxes = detect_text(local_detector, frames[0])
    assert covered_fraction(boxes, mask) >= 0.99
    assert all(box.source == "ocr" and 0.0 < box.confidence <= 1.0 for box in boxes)


def test_local_detector_tiles_frames_larger_than_its_limit():
    from deidflow.pixels import RapidOcrDetector

    detector = RapidOcrDetector(max_side=640, tile_overlap=96)
    rows, columns = 300, 1300  # three tiles of 640
    texts = (
        TextSpec("PATIENT LEFT", 20, 20, "aileron", 24),
        TextSpec("ACROSS SEAM", 560, 150, "aileron", 24),  # spans the first tile's right edge
        TextSpec("FAR RIGHT", 1150, 260, "aileron", 24),
    )
    frames, mask, _ = text_frames(
        1,
        rows=rows,
        columns=columns,
        background="flat",
        texts=tuple(TextSpec(t.text, t.x, t.y, t.font, t.size, (0, 0, 0)) for t in texts),
    )
    assert len(list(iter_tiles(rows, columns, 640, 96))) == 3
    boxes = detect_text(detector, frames[0])
    assert covered_fraction(boxes, mask) >= 0.99


def test_local_detector_on_empty_frames_finds_nothing(local_detector):
    assert detect_text(local_detector, np.zeros((480, 640, 3), dtype=np.uint8)) == []
    flat = np.full((300, 300, 3), 128, dtype=np.uint8)
    assert detect_text(local_detector, flat) == []


def test_detectors_reject_frames_that_are_not_rgb8(local_detector):
    for detector in (NoDetector(), local_detector):
        with pytest.raises(ValueError):
            detect_text(detector, np.zeros((10, 10), dtype=np.uint8))
        with pytest.raises(ValueError):
            detect_text(detector, np.zeros((10, 10, 3), dtype=np.uint16))


def test_tesseract_is_optional():
    if shutil.which("tesseract") is None:
        with pytest.raises(DetectorUnavailable):
            make_detector("tesseract")
        return
    frames, mask, _ = text_frames(1, background="flat", seed=12)
    boxes = detect_text(TesseractDetector(), frames[0])
    assert boxes and covered_fraction(boxes, mask, margin=6) > 0.5


def test_speckle_without_text_is_not_blanked(local_detector):
    # tall detector boxes on speckle are checked by the recogniser and dropped
    from pixel_testdata import ultrasound_background

    for seed in range(4):
        grey = ultrasound_background(480, 640, np.random.default_rng(100 + seed))
        frame = np.repeat(grey[:, :, None], 3, axis=2)
        boxes = detect_text(local_detector, frame)
        assert sum(box.area for box in boxes) < 0.01 * 480 * 640, boxes


def test_tall_real_text_survives_verification(local_detector):
    texts = (TextSpec("HUGE NAME", 20, 100, "aileron", 90, (255, 255, 255)),)
    frames, mask, _ = text_frames(1, background="ultrasound", texts=texts, seed=14)
    boxes = detect_text(local_detector, frames[0])
    assert covered_fraction(boxes, mask) >= 0.99
