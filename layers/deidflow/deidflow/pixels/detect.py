"""Text detection behind one interface.

Every back-end takes one rendered frame (rows, columns, 3) uint8 RGB and returns pixel boxes.
Back-ends must fail loudly (raise DetectionError) rather than return "no text" when they could
not look: an empty list means "looked and found nothing", and that decides whether pixels are
published untouched.
"""

from __future__ import annotations

import csv
import functools
import io
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .boxes import RedactionBox, box_from_points, merge_boxes
from .png import encode_png


class DetectionError(Exception):
    """A detector could not examine a frame; the instance must not be published as clean."""


class DetectorUnavailable(DetectionError):
    """The back-end's package, binary or model is not installed here."""


@runtime_checkable
class TextDetector(Protocol):
    """One frame in, pixel boxes around text out."""

    name: str

    def detect(self, frame_rgb8: np.ndarray) -> list[RedactionBox]: ...


def check_frame(frame_rgb8: np.ndarray) -> None:
    if frame_rgb8.dtype != np.uint8 or frame_rgb8.ndim != 3 or frame_rgb8.shape[2] != 3:
        raise ValueError(f"detectors take (rows, columns, 3) uint8 RGB, got {frame_rgb8.shape} {frame_rgb8.dtype}")


class NoDetector:
    """Finds nothing: headers-only runs, or manual/device-signature boxes alone."""

    name = "none"

    def detect(self, frame_rgb8: np.ndarray) -> list[RedactionBox]:
        check_frame(frame_rgb8)
        return []


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the fewest ``tile``-long tiles covering [0, length), each pair
    overlapping by at least ``overlap``, spread evenly.

    Overlap lets a word cut by one tile edge be seen whole in the neighbouring tile.
    """
    if length <= tile:
        return [0]
    step = max(tile - overlap, 1)
    count = -(-(length - overlap) // step)  # ceil
    count = max(count, 2)
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def iter_tiles(rows: int, columns: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) tiles covering a rows x columns frame."""
    for y0 in tile_origins(rows, tile, overlap):
        for x0 in tile_origins(columns, tile, overlap):
            yield x0, y0, min(x0 + tile, columns), min(y0 + tile, rows)


# --- local ONNX detector (rapidocr-onnxruntime: PP-OCRv4 DB text detector inside the wheel) ---


@functools.lru_cache(maxsize=4)
def _load_db_detector(threads: int) -> Any:
    """Load the DB text-detection model once per process (about 0.2 s and 5 MB)."""
    try:
        from rapidocr_onnxruntime.ch_ppocr_det import TextDetector as DbTextDetector
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml, update_model_path
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DetectorUnavailable("the local detector needs the 'rapidocr-onnxruntime' package") from exc
    config = update_model_path(read_yaml(DEFAULT_CFG_PATH))["Det"]
    config["intra_op_num_threads"] = threads
    config["inter_op_num_threads"] = threads
    return DbTextDetector(config)


@functools.lru_cache(maxsize=1)
def _load_recognizer() -> Any:
    """The PP-OCRv4 recognition model, only loaded when a tall box needs a second opinion."""
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    return TextRecognizer(update_model_path(read_yaml(DEFAULT_CFG_PATH))["Rec"])


class RapidOcrDetector:
    """Offline text detection with the PP-OCRv4 DB model shipped in rapidocr-onnxruntime.

    Only the detection model runs: redaction needs *where* text is, not what it says, and
    skipping recognition halves the cost. Thresholds default lower than rapidocr's own (0.5)
    because a missed caption leaks identity while an extra box only blanks a little image.
    The wheel is self-contained (models inside, no download at run time); it supports
    Python < 3.13.

    Tall boxes (taller than ``tall_box_fraction`` of the frame and ``tall_box_pixels``) are
    where the detector's false positives live: speckle, round anatomy. Those alone are read by
    the recognition model and kept only if it reads characters with at least
    ``min_recognition_score``; ordinary caption-height boxes are always kept. Measured here:
    speckle and anatomy score 0.05-0.07, real large captions 0.99.
    """

    name = "rapidocr"

    def __init__(
        self,
        *,
        box_threshold: float = 0.3,
        pixel_threshold: float = 0.2,
        unclip_ratio: float = 1.8,
        min_side: int = 736,
        max_side: int = 2048,
        tile_overlap: int = 96,
        threads: int = -1,
        verify_tall_boxes: bool = True,
        tall_box_fraction: float = 0.08,
        tall_box_pixels: int = 40,
        min_recognition_score: float = 0.3,
    ) -> None:
        self.box_threshold = box_threshold
        self.pixel_threshold = pixel_threshold
        self.unclip_ratio = unclip_ratio
        self.min_side = min_side
        self.max_side = max_side
        self.tile_overlap = tile_overlap
        self.verify_tall_boxes = verify_tall_boxes
        self.tall_box_fraction = tall_box_fraction
        self.tall_box_pixels = tall_box_pixels
        self.min_recognition_score = min_recognition_score
        self._model = _load_db_detector(threads)

    def _is_tall(self, box: RedactionBox, rows: int) -> bool:
        return box.height > max(self.tall_box_pixels, self.tall_box_fraction * rows)

    def _reads_as_text(self, box: RedactionBox, bgr: np.ndarray) -> bool:
        readings, _ = _load_recognizer()([np.ascontiguousarray(bgr[box.y0 : box.y1, box.x0 : box.x1])])
        text, score = readings[0][0], float(readings[0][1])
        return bool(text.strip()) and score >= self.min_recognition_score

    def _detect_region(self, region_bgr: np.ndarray) -> list[tuple[np.ndarray, float]]:
        model = self._model
        rows, columns = region_bgr.shape[:2]
        # Calls the pieces of rapidocr's TextDetector rather than TextDetector.__call__, which
        # drops the box scores; pinned to rapidocr-onnxruntime 1.3.x/1.4.x where these exist.
        preprocess = model.get_preprocess(max(rows, columns))
        preprocess.limit_side_len, preprocess.limit_type = self.min_side, "min"
        batch = preprocess(region_bgr)
        if batch is None:
            return []
        post = model.postprocess_op
        post.thresh, post.box_thresh, post.unclip_ratio = (
            self.pixel_threshold,
            self.box_threshold,
            self.unclip_ratio,
        )
        probability_map = model.infer(batch)[0]
        boxes, scores = post(probability_map, (rows, columns))
        return [(np.asarray(box, dtype=np.float64), float(score)) for box, score in zip(boxes, scores, strict=True)]

    def detect(self, frame_rgb8: np.ndarray) -> list[RedactionBox]:
        check_frame(frame_rgb8)
        rows, columns = frame_rgb8.shape[:2]
        # the model was trained on BGR input (OpenCV order)
        bgr = np.ascontiguousarray(frame_rgb8[:, :, ::-1])
        found: list[RedactionBox] = []
        tile = min(max(rows, columns), self.max_side)
        for x0, y0, x1, y1 in iter_tiles(rows, columns, tile, self.tile_overlap):
            region = bgr[y0:y1, x0:x1]
            if min(region.shape[:2]) < 8:
                continue
            for points, score in self._detect_region(region):
                box = box_from_points(points, score, "ocr").shifted(x0, y0).clipped(columns, rows)
                if box is None:
                    continue
                if self.verify_tall_boxes and self._is_tall(box, rows) and not self._reads_as_text(box, bgr):
                    continue
                found.append(box)
        return merge_boxes(found)


# --- Tesseract, when the binary happens to be installed ---------------------------------------


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

    def detect(self, frame_rgb8: np.ndarray) -> list[RedactionBox]:
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
        found: list[RedactionBox] = []
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
                found.append(clipped)
        return merge_boxes(found)


# --- factory ---------------------------------------------------------------------------------


def _make_rekognition(**options: Any) -> TextDetector:
    from .rekognition import RekognitionDetector, make_rekognition_client

    client = options.pop("client", None)
    if client is None:
        client = make_rekognition_client(
            region_name=options.pop("region_name", None),
            max_attempts=options.pop("max_attempts", 10),
        )
    return RekognitionDetector(client, **options)


DETECTOR_FACTORIES: dict[str, Callable[..., TextDetector]] = {
    "none": NoDetector,
    "rapidocr": RapidOcrDetector,
    "local": RapidOcrDetector,
    "tesseract": TesseractDetector,
    "rekognition": _make_rekognition,
}


def make_detector(name: str, **options: Any) -> TextDetector:
    """Build a detector by name: "none", "local" (= "rapidocr"), "tesseract", "rekognition".

    ``rekognition`` takes ``client=`` (a boto3 Rekognition client); without one it builds a
    client with adaptive retries from the default AWS credential chain.
    """
    try:
        factory = DETECTOR_FACTORIES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown text detector {name!r}; choose one of {sorted(DETECTOR_FACTORIES)}") from None
    return factory(**options)
