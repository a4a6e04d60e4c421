"""The offline detector: the PP-OCRv4 DB text detector inside the rapidocr-onnxruntime wheel."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..boxes import RedactionBox, box_from_points, merge_boxes
from .base import DetectorUnavailable, check_frame, iter_tiles


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
