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

    def joined(self, frame_rgb8: np.ndarray) -> str:
        """All readings, upper case, separators removed (catches words read without spaces)."""
        return re.sub(r"[^A-Z0-9]", "", "".join(self.read(frame_rgb8)).upper())


@pytest.fixture(scope="session")
def reader() -> Reader:
    pytest.importorskip("rapidocr_onnxruntime")
    return Reader()


@pytest.fixture(scope="session")
def local_detector():  # the detector type lives in the package under test
    pytest.importorskip("rapidocr_onnxruntime")
    from deidflow.pixels import make_detector

    return make_detector("local")
