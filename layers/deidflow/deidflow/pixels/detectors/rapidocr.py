"""The offline detector: the PP-OCRv4 DB text detector inside the rapidocr-onnxruntime wheel."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from ..boxes import RedactionBox, box_from_points, merge_boxes
from ..text_filter import TextReading, latin_characters, text_lines
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
    """The PP-OCRv4 recognition model (about 10 MB), loaded on first use."""
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer
    from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
    from rapidocr_onnxruntime.utils import read_yaml, update_model_path

    return TextRecognizer(update_model_path(read_yaml(DEFAULT_CFG_PATH))["Rec"])


def _is_convincing(text: str, confidence: float) -> bool:
    """A first reading needs no second look: several Latin letters or digits, read with confidence."""
    return latin_characters(text) >= 2 and confidence >= 0.9


def _second_looks(crop_bgr: np.ndarray) -> list[np.ndarray]:
    """Other ways to show the recogniser a crop it could not read: the verification pass.

    The recognition model reads one horizontal line of upright glyphs at about 48 px. Labels that
    are not that - letters stacked one above the other ("R" over "I" at a CT's edge, "CM/S" beside
    a colour bar), text turned 90 degrees, small faint grey on grey - are shown to it as one
    contrast-stretched line, restacked side by side, and turned both ways.
    """
    low, high = crop_bgr.min(axis=(0, 1), keepdims=True), crop_bgr.max(axis=(0, 1), keepdims=True)
    stretched = ((crop_bgr - low) * (255.0 / np.maximum(high - low, 1))).astype(np.uint8)
    scale = max(1, -(-32 // max(stretched.shape[0], 1)))
    if scale > 1:
        stretched = np.repeat(np.repeat(stretched, scale, axis=0), scale, axis=1)
    looks = [stretched, np.ascontiguousarray(np.rot90(stretched, 1)), np.ascontiguousarray(np.rot90(stretched, -1))]
    lines = text_lines(crop_bgr[:, :, ::-1])
    if len(lines) > 1:
        tallest = max(stop - start for start, stop in lines)
        gap = np.zeros((tallest, max(tallest // 2, 2), 3), dtype=np.uint8)
        pieces: list[np.ndarray] = []
        for start, stop in lines:
            piece = np.zeros((tallest, crop_bgr.shape[1], 3), dtype=np.uint8)
            piece[: stop - start] = crop_bgr[start:stop]
            pieces.extend([piece, gap])
        looks.append(np.ascontiguousarray(np.concatenate(pieces, axis=1)))
    return looks


class RapidOcrDetector:
    """Offline text detection with the PP-OCRv4 models shipped in rapidocr-onnxruntime.

    The DB detection model proposes boxes; the recognition model reads each one, so that the text
    filter (text_filter.py) can tell a caption from a bladder by its characters. Thresholds default
    lower than rapidocr's own (0.5) because a missed caption leaks identity; the filter, not the
    detector's score, removes what is not text. A box whose first reading is not convincing is
    read again in other forms (``_second_looks``), and those readings go to the filter too.

    The wheel is self-contained (models inside, no download at run time).
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
    ) -> None:
        self.box_threshold = box_threshold
        self.pixel_threshold = pixel_threshold
        self.unclip_ratio = unclip_ratio
        self.min_side = min_side
        self.max_side = max_side
        self.tile_overlap = tile_overlap
        self._model = _load_db_detector(threads)

    def _reading(self, box: RedactionBox, bgr: np.ndarray) -> TextReading:
        crop = np.ascontiguousarray(bgr[box.y0 : box.y1, box.x0 : box.x1])
        recognise = _load_recognizer()
        (first,), _ = recognise([crop])
        text, confidence = str(first[0]), float(first[1])
        if _is_convincing(text, confidence):
            return TextReading(box, text, confidence)
        looks, _ = recognise(_second_looks(crop))
        return TextReading(box, text, confidence, tuple((str(t), float(c)) for t, c in looks))

    def _detect_region(self, region_bgr: np.ndarray, ratio: float | None = None) -> list[tuple[np.ndarray, float]]:
        """Candidate boxes in one region; ``ratio``: the resize factor to use (None: rapidocr's,
        the shorter side brought up to ``min_side``)."""
        model = self._model
        rows, columns = region_bgr.shape[:2]
        # Calls the pieces of rapidocr's TextDetector rather than TextDetector.__call__, which
        # drops the box scores; pinned to rapidocr-onnxruntime 1.3.x/1.4.x where these exist.
        preprocess = model.get_preprocess(max(rows, columns))
        preprocess.limit_side_len, preprocess.limit_type = self.min_side, "min"
        if ratio is not None:
            # "min" resizes by limit / shorter side when the shorter side is below limit, else not
            preprocess.limit_side_len = max(1, round(min(rows, columns) * max(ratio, 1.0)))
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

    def read(self, frame_rgb8: np.ndarray) -> list[TextReading]:
        return self._read(frame_rgb8, None)

    def read_crop(self, crop_rgb8: np.ndarray, frame_shape: tuple[int, int]) -> list[TextReading]:
        """Read a crop of a ``frame_shape`` (rows, columns) frame at the scale the whole frame is read
        at: ``read`` brings a region's shorter side up to ``min_side``, which would blow a 100-pixel
        crop up sevenfold (costing more than the frame, and showing the model glyphs far larger
        than it sees them in the frame). Boxes are in the crop's coordinates."""
        rows, columns = frame_shape
        tile = min(max(rows, columns), self.max_side)
        shorter = max(min(min(rows, tile), min(columns, tile)), 1)
        return self._read(crop_rgb8, max(1.0, self.min_side / shorter))

    def _read(self, frame_rgb8: np.ndarray, ratio: float | None) -> list[TextReading]:
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
            for points, score in self._detect_region(region, ratio):
                box = box_from_points(points, score, "ocr").shifted(x0, y0).clipped(columns, rows)
                if box is not None:
                    found.append(box)
        # tiles overlap: a caption seen whole in two of them is read once
        return [self._reading(box, bgr) for box in merge_boxes(found)]
