"""Fixtures for the pixels tests: the domain package on sys.path and one shared OCR engine."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
# the helpers module next to this file, whatever pytest's import mode
sys.path.insert(0, str(HERE))
try:
    import deidflow.pixels  # noqa: F401
except ImportError:  # package not installed: use the source tree
    sys.path.insert(0, str(HERE.parents[2] / "layers" / "deidflow"))


class Reader:
    """Full OCR (detection + recognition) used as the *judge* of redaction, not the redactor."""

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        # a low text_score keeps weak readings too: the judge should be hard to satisfy
        self.engine = RapidOCR(text_score=0.3)

    def read(self, frame_rgb8: np.ndarray) -> list[str]:
        result, _ = self.engine(np.ascontiguousarray(frame_rgb8[:, :, ::-1]))
        return [text for _, text, _ in (result or [])]

    def tokens(self, frame_rgb8: np.ndarray) -> set[str]:
        tokens: set[str] = set()
        for text in self.read(frame_rgb8):
            tokens.update(t for t in re.split(r"[^A-Z0-9]+", text.upper()) if len(t) >= 3)
        return tokens

    def tokens_in(self, frame_rgb8: np.ndarray, where: np.ndarray) -> set[str]:
        """Tokens of the readings whose centre lies where ``where`` (a bool mask) is true."""
        result, _ = self.engine(np.ascontiguousarray(frame_rgb8[:, :, ::-1]))
        tokens: set[str] = set()
        for points, text, _ in result or []:
            x, y = np.mean(np.asarray(points, dtype=float), axis=0).astype(int)
            if 0 <= y < where.shape[0] and 0 <= x < where.shape[1] and where[y, x]:
                tokens.update(t for t in re.split(r"[^A-Z0-9]+", text.upper()) if len(t) >= 3)
        return tokens

    def joined(self, frame_rgb8: np.ndarray) -> str:
        """All readings, upper case, separators removed (catches words read without spaces)."""
        return re.sub(r"[^A-Z0-9]", "", "".join(self.read(frame_rgb8)).upper())


class TesseractReader:
    """Tesseract as the second judge: another engine, trained on other data, with other blind spots."""

    def __init__(self) -> None:
        from deidflow.pixels import TesseractDetector

        self.engine = TesseractDetector()

    def tokens_in(self, frame_rgb8: np.ndarray, where: np.ndarray | None = None) -> set[str]:
        """Tokens of the words read with some confidence (centre where ``where`` is true, if given)."""
        tokens: set[str] = set()
        for reading in self.engine.read(frame_rgb8):
            box = reading.box
            x, y = (box.x0 + box.x1) // 2, (box.y0 + box.y1) // 2
            if reading.confidence >= 0.5 and (where is None or where[y, x]):
                tokens.update(t for t in re.split(r"[^A-Z0-9]+", reading.text.upper()) if len(t) >= 3)
        return tokens

    def tokens(self, frame_rgb8: np.ndarray) -> set[str]:
        return self.tokens_in(frame_rgb8)


@pytest.fixture(scope="session")
def second_reader() -> TesseractReader:
    import shutil

    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (Debian: tesseract-ocr)")
    return TesseractReader()


@pytest.fixture(scope="session")
def reader() -> Reader:
    pytest.importorskip("rapidocr_onnxruntime")
    return Reader()


@pytest.fixture(scope="session")
def local_detector():  # the detector type lives in the package under test
    pytest.importorskip("rapidocr_onnxruntime")
    from deidflow.pixels import make_detector

    return make_detector("local")
