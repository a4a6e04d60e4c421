"""Is there text in this box? The one filter every detector's candidates pass through.

A text detector (PP-OCR's DB model, Rekognition, Tesseract) proposes boxes with a score that says
"this looks like it could be text". On medical images that score is high on things that are not
text: the bladder and the head of a bone scan, the colour-flow region of a Doppler, a face, an ECG
trace. Blanking those destroys the finding a study was about, so a box is redacted only when there
is evidence that it holds characters:

1. **The reading.** The recogniser's characters and their confidence (PP-OCR's recognition model
   locally, ``DetectedText``/``Confidence`` from Rekognition, Tesseract's word and ``conf``). A
   reading with enough letters or digits at enough confidence is text. PP-OCR's model was trained
   on Chinese and English, and on blobs it "reads" a lone CJK character at low confidence, so
   characters of other scripts need a higher confidence than Latin letters and digits (thresholds
   below, both in the rules). A confident reading of symbols only ("()", "****") is not
   identifying text.
   **The verification pass**: a back-end that can read again (the local one) shows the recogniser
   a crop it could not read in other forms (restacked, stretched, turned); such a second look
   confirms text only when it is sure.
2. **The shape.** When the reading is weak or empty (a vertical label, letters stacked one above
   the other, a word in a frame, very small or faint text), the crop is measured: a text line is
   glyph-sized components of thin strokes in a contrasting colour on a flat background. A blob is
   one fat component with soft edges; a trace is one thin component as wide as the box; a face or
   a colour-flow region has neither a flat background nor glyph-sized parts.

A box is kept when either says text; it is dropped only when neither does. Measured on the
labelled set (benchmarks/bench_pixels.py --labelled); docs/rules.md gives the figures behind the
defaults.

Nothing here logs or returns the characters read: they may be a patient's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .boxes import RedactionBox


def latin_characters(text: str) -> int:
    """How many Latin letters and digits a reading holds (the characters a reading is trusted on)."""
    return sum(1 for c in text if c.isascii() and c.isalnum())


# The shape vouches for a box of at most this many caption lines and pixels (a line of 2048 x 64).
SHAPE_MAX_LINES = 8
SHAPE_MAX_PIXELS = 2048 * 64


@dataclass(frozen=True)
class TextReading:
    """A detector's candidate: a box, what was read in it (may be empty) and how sure the reader was.

    ``text`` may hold PHI: it is used for the decision and never stored, logged or reported.
    """

    box: RedactionBox
    text: str
    confidence: float  # the reader's confidence in [0, 1]; 0 when nothing was read
    second_looks: tuple[tuple[str, float], ...] = ()  # (text, confidence) read from other views of the crop


@dataclass(frozen=True)
class TextShape:
    """What the crop under a box measures (no pixel values, no characters)."""

    contrast: float  # mean level of the glyph class minus the background's, 0-255
    foreground: float  # fraction of the crop in the glyph class
    stroke: float  # mean stroke width over the box height
    glyph_share: float  # fraction of the glyph-class pixels within the box in glyph-sized components
    glyphs: int  # how many glyph-sized components
    line_height: int  # the tallest line of glyphs, in pixels
    widest: float  # widest component's width over the box width
    extent: float  # the glyph class's share of the box's rows or columns, whichever is smaller
    soft_edges: float  # fraction of the crop at levels halfway between glyph and background
    background_noise: float  # spread of the background's levels over the contrast

    def as_dict(self) -> dict[str, float]:
        return {f.name: round(float(getattr(self, f.name)), 3) for f in fields(self)}


@dataclass(frozen=True)
class TextFilter:
    """Thresholds for "this box holds text" (rules: ``pixels.text_filter``); defaults by measurement.

    enabled: off, every candidate box is redacted (the detector's own score alone decides).
    min_confidence: a reading with ``min_characters`` Latin letters or digits at this confidence is text.
    short_text, short_text_confidence: a reading of at most ``short_text`` characters needs this
        confidence (a ring reads as "O", a pair of blobs as "11").
    min_confidence_other_scripts: the same for letters of other scripts (a lone CJK character at low
        confidence is PP-OCR's usual reading of a blob).
    min_contrast: the glyph class must differ from the background by this many levels (of 255).
    max_stroke: strokes no wider than this fraction of the box height.
    min_glyph_share: this share of the glyph-class pixels must lie in glyph-sized components.
    min_glyphs: the shape vouches for two glyphs or more: one ring or blob the reader cannot read is
        an eye or a vessel more often than a letter, and a lone letter is not a word.
    max_foreground: a text box is mostly background.
    max_line_height: the shape alone vouches only for caption-sized lines (pixels): larger text is read
        confidently by the recogniser, and larger "glyphs" are anatomy (a brain slice is an "O").
    min_extent: a detector's box is drawn around a line of text, so the glyphs span this share of
        its height and width; a speck in a large box does not.
    max_soft_edges: rendered glyphs have sharp edges; a blob's levels fade from inside to outside.
    max_background_noise: around a caption the background is flat; around anatomy or a face it is not.
    second_look_confidence, second_look_characters: the verification pass (the crop read again
        restacked, stretched, turned) confirms text only with this many Latin letters or digits at
        this confidence: turned and stretched views of a blob read as letters more easily.
    """

    enabled: bool = True
    min_confidence: float = 0.5
    min_confidence_other_scripts: float = 0.8
    min_characters: int = 1
    short_text: int = 2
    short_text_confidence: float = 0.8
    min_contrast: float = 40.0
    max_stroke: float = 0.3
    min_glyph_share: float = 0.6
    min_glyphs: int = 2
    max_foreground: float = 0.6
    min_extent: float = 0.3
    max_line_height: int = 32
    max_soft_edges: float = 0.2
    max_background_noise: float = 0.2
    second_look_confidence: float = 0.8
    second_look_characters: int = 2

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any] | None) -> TextFilter:
        if not spec:
            return cls()
        known = {f.name for f in fields(cls)}
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown text_filter keys: {sorted(unknown)}")
        return cls(**dict(spec))

    def reads_as_text(self, text: str, confidence: float) -> bool:
        latin = latin_characters(text)
        other = sum(1 for c in text if c.isalnum()) - latin
        # one or two characters are what a recogniser makes of a ring or a blob ("O", "11")
        short = latin + other <= self.short_text
        needed = max(self.min_confidence, self.short_text_confidence) if short else self.min_confidence
        if latin >= self.min_characters and confidence >= needed:
            return True
        return (
            other > 0
            and latin + other >= self.min_characters
            and confidence >= max(needed, self.min_confidence_other_scripts)
        )

    def shaped_like_text(self, shape: TextShape | None) -> bool:
        if shape is None:
            return False
        return (
            shape.contrast >= self.min_contrast
            and shape.foreground <= self.max_foreground
            and shape.stroke <= self.max_stroke
            and shape.glyphs >= self.min_glyphs
            and shape.line_height <= self.max_line_height
            and shape.extent >= self.min_extent
            and shape.glyph_share >= self.min_glyph_share
            and shape.soft_edges <= self.max_soft_edges
            and shape.background_noise <= self.max_background_noise
        )

    def confirms(self, text: str, confidence: float) -> bool:
        """A second look counts only when it is sure: it sees what is not there more easily."""
        latin = latin_characters(text)
        return latin >= self.second_look_characters and confidence >= self.second_look_confidence

    def keeps(self, reading: TextReading, frame_rgb8: np.ndarray) -> bool:
        """Whether ``reading``'s box is redacted."""
        if not self.enabled or self.reads_as_text(reading.text, reading.confidence):
            return True
        if any(self.confirms(text, confidence) for text, confidence in reading.second_looks):
            return True
        if reading.confidence >= self.min_confidence and not any(c.isalnum() for c in reading.text):
            return False  # read with confidence as symbols only ("()", "****"): nothing identifying
        box = reading.box
        if box.height > SHAPE_MAX_LINES * self.max_line_height or box.area > SHAPE_MAX_PIXELS:
            return False  # not a block of captions; and measuring it could take seconds
        return self.shaped_like_text(measure_shape(frame_rgb8, box))

    def boxes(self, readings: Iterable[TextReading], frame_rgb8: np.ndarray) -> list[RedactionBox]:
        """The boxes of the readings this filter keeps."""
        return [reading.box for reading in readings if self.keeps(reading, frame_rgb8)]


def _glyph_class(grey: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Split a crop into background and glyph class (Otsu); the background is the border's class."""
    values = grey.ravel()
    if values.size < 4 or int(values.max()) == int(values.min()):
        return None
    histogram = np.bincount(values, minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    weight = np.cumsum(histogram)
    mean = np.cumsum(histogram * levels)
    total_weight, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total_weight) ** 2 / (weight * (total_weight - weight))
    between[~np.isfinite(between)] = -1.0
    threshold = int(np.argmax(between))
    high = grey > threshold
    border = np.concatenate([high[0, :], high[-1, :], high[:, 0], high[:, -1]])
    glyphs = ~high if border.mean() > 0.5 else high
    if not glyphs.any() or glyphs.all():
        return None
    contrast = abs(float(grey[glyphs].mean()) - float(grey[~glyphs].mean()))
    return glyphs, contrast


def _labels(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of ``mask``: each pixel's label is the smallest flat index in
    its component (background: ``mask.size``).

    Labels spread by neighbour minimum and then jump (a pixel takes the label of the pixel its
    label names), so the rounds grow with the logarithm of a component's length, not the length:
    a crafted serpentine cannot make a crop cost minutes.
    """
    rows, columns = mask.shape
    size = rows * columns
    labels = np.where(mask, np.arange(size).reshape(rows, columns), size)
    while True:
        padded = np.pad(labels, 1, constant_values=size)
        neighbours = np.stack(
            [padded[1 + dy : 1 + dy + rows, 1 + dx : 1 + dx + columns] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        ).min(axis=0)
        spread = np.where(mask, neighbours, size)
        flat = spread.ravel()
        spread = np.where(mask, flat[np.minimum(spread, size - 1)], size)
        if np.array_equal(spread, labels):
            return labels
        labels = spread


def _components(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(height, width, area) of each 8-connected component of ``mask``, in one pass over its pixels."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    names, component = np.unique(_labels(mask)[ys, xs], return_inverse=True)
    count = len(names)
    top, left = np.full(count, mask.shape[0]), np.full(count, mask.shape[1])
    bottom, right = np.full(count, -1), np.full(count, -1)
    np.minimum.at(top, component, ys)
    np.minimum.at(left, component, xs)
    np.maximum.at(bottom, component, ys)
    np.maximum.at(right, component, xs)
    areas = np.bincount(component, minlength=count)
    return [
        (int(b - t + 1), int(r - lft + 1), int(a))
        for t, lft, b, r, a in zip(top, left, bottom, right, areas, strict=True)
    ]


def _lines(glyphs: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the text lines in a glyph mask: runs of rows holding glyph pixels."""
    occupied = glyphs.any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[False], occupied, [False]]).astype(np.int8)))
    return [(int(start), int(stop)) for start, stop in zip(edges[::2], edges[1::2], strict=True)]


def _glyph_mask(crop_rgb8: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(grey crop, glyph-class mask, contrast) of a crop, or None when it is flat."""
    if crop_rgb8.shape[0] < 3 or crop_rgb8.shape[1] < 3:
        return None
    # bright captions (white, yellow, green on black) stand out in the brightest channel,
    # dark ones on a light background in the darkest
    border = np.concatenate([crop_rgb8[0], crop_rgb8[-1], crop_rgb8[:, 0], crop_rgb8[:, -1]])
    grey = crop_rgb8.max(axis=2) if float(border.mean()) < 128 else crop_rgb8.min(axis=2)
    grey = np.ascontiguousarray(grey)
    split = _glyph_class(grey)
    if split is None:
        return None
    return grey, split[0], split[1]


def text_lines(crop_rgb8: np.ndarray) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of the lines of glyphs in a crop (none when it is flat)."""
    split = _glyph_mask(crop_rgb8)
    return _lines(split[1]) if split else []


def _cut_by_the_box(glyphs: np.ndarray, sides: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Pixels of the parts that reach the edge of a crop padded around a box, on the padded sides
    (top, bottom, left, right): they go on beyond the box, so they are a piece of something larger
    (an ECG trace's QRS spike, which reads as "11"), not a glyph, which has background all round."""
    labels = _labels(glyphs)
    edges = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    reaching = np.unique(np.concatenate([edge for edge, padded in zip(edges, sides, strict=True) if padded] or [[]]))
    return np.isin(labels, reaching) & glyphs


def measure_shape(frame_rgb8: np.ndarray, box: RedactionBox, margin: int = 2) -> TextShape | None:
    """Measure the crop of ``frame_rgb8`` under ``box`` (and ``margin`` pixels around it, to see what
    goes on beyond it); None when it is flat (nothing to measure)."""
    rows, columns = frame_rgb8.shape[:2]
    around = box.padded(margin).clipped(columns, rows) or box
    split = _glyph_mask(frame_rgb8[around.y0 : around.y1, around.x0 : around.x1])
    if split is None:
        return None
    grey, glyphs, contrast = split
    sides = (around.y0 < box.y0, around.y1 > box.y1, around.x0 < box.x0, around.x1 > box.x1)
    # what goes on beyond the box (a trace, the colour bar beside a label) is not measured as glyphs
    whole = glyphs & ~_cut_by_the_box(glyphs, sides)
    width = glyphs.shape[1]
    area = int(glyphs.sum())
    # Each text line is measured on its own: letters stacked one above the other are lines of one
    # glyph each, and a glyph's size is judged against its line's height, not the box's.
    glyph_area = glyph_count = 0
    strokes: list[float] = []
    widest = 0
    for start, stop in _lines(whole):
        line = whole[start:stop]
        line_height = stop - start
        padded = np.pad(line, 1)
        inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        edge = max(int((line & ~inner).sum()), 1)
        strokes.append(2.0 * int(line.sum()) / edge / max(line_height, 1))  # area over half the perimeter
        for h, w, a in _components(line):
            widest = max(widest, w)
            if line_height >= 3 and h >= 0.5 * line_height and w <= max(1.6 * line_height, 3) and a >= 3:
                glyph_area += a
                glyph_count += 1
    background = grey[~glyphs].astype(np.float64)
    middle = np.abs(grey.astype(np.float64) - (float(grey[glyphs].mean()) + background.mean()) / 2) < contrast / 4
    return TextShape(
        contrast=contrast,
        foreground=area / glyphs.size,
        stroke=float(np.median(strokes)) if strokes else 1.0,
        glyph_share=glyph_area / max(int(whole.sum()), 1),
        glyphs=glyph_count,
        line_height=max((stop - start for start, stop in _lines(whole)), default=0),
        widest=widest / width,
        extent=min(float(glyphs.any(axis=1).mean()), float(glyphs.any(axis=0).mean())),
        soft_edges=float(middle.mean()),
        background_noise=float(background.std()) / max(contrast, 1.0),
    )
