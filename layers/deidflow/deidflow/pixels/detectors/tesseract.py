"""Tesseract as a detector, when its binary happens to be installed (a second opinion, and the judge
of the pixel tests)."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess

import numpy as np

from ..boxes import RedactionBox
from ..png import encode_png
from ..text_filter import TextReading
from .base import DetectionError, DetectorUnavailable, check_frame


class TesseractDetector:
    """Word boxes from the ``tesseract`` command (TSV output). Optional: needs the binary.

    Tesseract reads dark-on-light text at ~30 px x-height best, so frames are upscaled and, when
    mostly dark (ultrasound), inverted before OCR.
    """

    name = "tesseract"

    def __init__(
        self,
        *,
        binary: str = "tesseract",
        language: str = "eng",
        page_segmentation_mode: int = 11,
        min_confidence: float = 0.0,
        upscale: int = 2,
        timeout_seconds: float = 120.0,
    ) -> None:
        path = shutil.which(binary)
        if path is None:
            raise DetectorUnavailable(f"the tesseract back-end needs the {binary!r} binary on PATH")
        self.binary = path
        self.language = language
        self.page_segmentation_mode = page_segmentation_mode
        self.min_confidence = min_confidence
        self.upscale = max(int(upscale), 1)
        self.timeout_seconds = timeout_seconds

    def read(self, frame_rgb8: np.ndarray) -> list[TextReading]:
        check_frame(frame_rgb8)
        rows, columns = frame_rgb8.shape[:2]
        grey = frame_rgb8.max(axis=2)
        if grey.mean() < 128:
            grey = 255 - grey
        if self.upscale > 1:
            grey = np.repeat(np.repeat(grey, self.upscale, axis=0), self.upscale, axis=1)
        command = [
            self.binary,
            "stdin",
            "stdout",
            "-l",
            self.language,
            "--psm",
            str(self.page_segmentation_mode),
            "tsv",
        ]
        try:
            completed = subprocess.run(
                command,
                input=encode_png(grey),
                capture_output=True,
                timeout=self.timeout_seconds,
                check=True,
            )
        except (subprocess.SubprocessError, OSError) as exc:
            raise DetectionError(f"tesseract failed: {type(exc).__name__}") from exc
        found: list[TextReading] = []
        reader = csv.DictReader(
            io.StringIO(completed.stdout.decode("utf-8", "replace")), delimiter="\t", quoting=csv.QUOTE_NONE
        )
        for row in reader:
            try:
                level, confidence = int(row["level"]), float(row["conf"])
            except (KeyError, TypeError, ValueError):
                continue
            if level != 5 or not (row.get("text") or "").strip() or confidence < self.min_confidence:
                continue
            scale = self.upscale
            left, top = int(row["left"]) // scale, int(row["top"]) // scale
            right = -(-(int(row["left"]) + int(row["width"])) // scale)
            bottom = -(-(int(row["top"]) + int(row["height"])) // scale)
            box = RedactionBox(left, top, right, bottom, confidence / 100.0, "tesseract")
            clipped = box.clipped(columns, rows)
            if clipped is not None:
                found.append(TextReading(clipped, row["text"], max(confidence, 0.0) / 100.0))
        return found
