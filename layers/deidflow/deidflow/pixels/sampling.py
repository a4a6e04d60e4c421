"""Which frames of a cine the text detector looks at when text may be in some frames only.

The fixed samples (first, middle, last, every Nth; see ``policy.frames_to_detect``) miss a caption
burned into frames 43-47 only, at a place no sampled frame shows text. Detection (OCR) costs
tens to hundreds of milliseconds a frame; decoding and rendering a frame costs a few. So every
frame is decoded and rendered, a cheap look at it decides whether it shows text-like content the
detector has not yet been shown, and only such frames (and the fixed samples) are detected.

What "text-like" means here: *stroke contrast*, how far a pixel stands out from its neighbourhood
at the scale of a character's stroke - a morphological top-hat: brightness minus its 5x5 opening
(bright strokes), or the 5x5 closing of the darkest channel minus it (dark strokes on a light
ground). A stroke of burned-in text is at most a few pixels wide and sharp, so it is erased by the
opening (closing) and stands out by almost its full contrast; tissue, Doppler colour and
gradients are wider than the window and stand out by little.

A frame is sent to the detector when, compared with the last frame that was sent, it has enough
*new* stroke pixels in some small window that lies outside every box already found (those are
filled in every frame anyway, so text there is removed whatever it says):

* strong strokes anywhere, over the moving image too: stroke contrast >= ``STRONG`` and bright
  (>= ``BRIGHT``) or very high contrast (>= ``VERY_STRONG``); dark strokes must sit on a light
  ground. Speckle grains rarely reach this; text drawn to be read over an image does.
* faint strokes (>= ``FAINT``) in *quiet* cells, the text-prone bands: cells whose faint-stroke
  pattern has not changed over the last ``QUIET_FRAMES`` frames (borders, caption bands, black
  background). Any text appearing there is new, whatever its brightness.

"New" is judged with hysteresis: a pixel counts only if it was not even a faint stroke in the last
sent frame, so compression noise around a static caption does not make it look new. Comparing
with the last *sent* frame (not only the previous one) means a caption that fades in slowly over
many frames is sent once it has grown enough strokes, however small each step.

Where the detector looks: a fixed sample, and the first frame, are detected whole. A frame sent
only because of a change is detected in the *changed regions* only: the union of the windows that
had enough new stroke pixels, grown by ``GROW_ROWS`` above and below and ``GROW_COLUMNS`` left and
right (text runs in lines: a word whose first glyph changed is seen whole, with the background
around it the detector needs), nearby regions merged, each at least ``MIN_REGION`` pixels a side,
clipped to the frame. An ECG sweep, which changes in every frame of an echo, then costs a strip
around its head instead of a whole detection. When the regions would cover most of the frame
(``WHOLE_FRAME_SHARE``) the frame is detected whole. A box found touching a crop's edge (not the
frame's) may be a line cut by the crop: unless boxes found before cover the line's way on past
that edge, the frame is then detected again, whole (``widen``).
The comparison baseline ("the last sent frame") is kept per pixel: only what the detector was
shown is updated, so a caption that grows slowly beside an ECG that is sent every frame is still
compared with what the detector last saw *there*.

What this costs: every frame decoded and rendered once (frames sent are kept decoded, as before);
per frame a few full-size masks, of which only two (the last sent frame's, the previous frame's)
and a per-cell counter are kept, so memory does not grow with the number of frames.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from .boxes import RedactionBox
from .detectors import TextDetector, detect_text
from .policy import PixelPolicy, frames_to_detect
from .render import iter_decoded_frames, render_for_detection
from .text_filter import TextFilter

# Stroke contrast thresholds, in levels of the rendered 8-bit frame. Measured on deid-data's echo
# cine (tissue, colour Doppler, an ECG sweep) and synthetic speckle: grey tissue and Doppler reach
# a contrast of 128 at a brightness of 200 in at most 6 new pixels a window per frame; a word of
# burned-in text over the image, 50 to 100.
FAINT = 32  # any stroke a reader could see on a quiet ground
STRONG = 128  # a stroke that stands out over a moving image ...
BRIGHT = 200  # ... when it is bright: white, yellow, green, cyan, saturated colour
LIGHT_GROUND = 160  # dark strokes count as strong on a ground at least this light
STROKE_WINDOW = 5  # pixels: wider than a stroke of burned-in text, narrower than most anatomy

# A window of WINDOW x WINDOW pixels with at least NEW_PIXELS new stroke pixels sends the frame:
# about one small character (a digit of Pillow's 11-pixel bitmap font has 7 to 11 stroke pixels).
WINDOW = 16
NEW_PIXELS = 7

# Changed regions: the hot windows grown by these many pixels (and rounded out to CELL); regions
# closer than the growth merge. A region is at least MIN_REGION pixels a side; regions covering
# more than WHOLE_FRAME_SHARE of the frame are not worth cropping. A box within EDGE pixels of a
# crop edge that is not a frame edge, where no box found before goes on, sends the whole frame to
# the detector.
GROW_ROWS = 3 * WINDOW
GROW_COLUMNS = 10 * WINDOW
MIN_REGION = 96
WHOLE_FRAME_SHARE = 0.5
EDGE = 2

# Quiet cells (the text-prone bands): CELL x CELL pixels in which at most QUIET_NOISE pixels changed
# by more than NOISE levels between consecutive frames, for each of the last QUIET_FRAMES frames,
# and so did their eight neighbours (a stroke's contrast depends on pixels up to 4 away, and JPEG
# spreads a moving neighbour's noise over 8 to 16 pixels).
CELL = 16
QUIET_FRAMES = 5
QUIET_NOISE = 1
NOISE = 16


def _shifted_extreme(plane: np.ndarray, size: int, axis: int, take_max: bool) -> np.ndarray:
    """Running min or max over ``size`` pixels along ``axis``, edges replicated (numpy only: the
    layer has no OpenCV; on uint8 this is a few milliseconds a frame)."""
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(plane, pad, mode="edge")
    length = plane.shape[axis]

    def shifted(offset: int) -> np.ndarray:
        return padded[offset : offset + length] if axis == 0 else padded[:, offset : offset + length]

    result = shifted(0).copy()
    combine = np.maximum if take_max else np.minimum
    for offset in range(1, size):
        combine(result, shifted(offset), out=result)
    return result


def _erode(plane: np.ndarray, size: int) -> np.ndarray:
    return _shifted_extreme(_shifted_extreme(plane, size, 0, False), size, 1, False)


def _dilate(plane: np.ndarray, size: int) -> np.ndarray:
    return _shifted_extreme(_shifted_extreme(plane, size, 0, True), size, 1, True)


@dataclass(frozen=True)
class FrameSignature:
    """What the selector keeps of one rendered frame: where it has faint and strong strokes, and its
    brightest and darkest channels (how much each pixel moved). Full-size, but at most three are
    held at a time: the last sent frame's, the previous frame's, this frame's."""

    faint: np.ndarray
    strong: np.ndarray
    brightness: np.ndarray  # brightest channel
    darkness: np.ndarray  # darkest channel


def frame_signature(rendered: np.ndarray) -> FrameSignature:
    """The signature of a rendered (rows, columns, 3) uint8 frame."""
    # (channel by channel: numpy's max over the last axis of an RGB frame is 25 times slower)
    red, green, blue = rendered[..., 0], rendered[..., 1], rendered[..., 2]
    bright8 = np.maximum(np.maximum(red, green), blue)
    dark8 = np.minimum(np.minimum(red, green), blue)
    # white top-hat of the brightest channel: bright or saturated strokes; black top-hat of the
    # darkest channel: dark (or saturated) strokes on a lighter ground (morphology in uint8, the
    # differences in int16)
    opened = _dilate(_erode(bright8, STROKE_WINDOW), STROKE_WINDOW)
    closed = _erode(_dilate(dark8, STROKE_WINDOW), STROKE_WINDOW).astype(np.int16)
    bright, dark = bright8.astype(np.int16), dark8.astype(np.int16)
    bright_contrast = bright - opened
    dark_contrast = closed - dark
    faint = (bright_contrast >= FAINT) | (dark_contrast >= FAINT)
    strong = (bright_contrast >= STRONG) & (bright >= BRIGHT)
    strong |= (dark_contrast >= STRONG) & (closed >= LIGHT_GROUND)
    return FrameSignature(faint=faint, strong=strong, brightness=bright, darkness=dark)


def _window_sums(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """For each top-left corner, the True pixels of ``mask`` in the h x w window there."""
    rows, columns = mask.shape
    integral = np.zeros((rows + 1, columns + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
    return integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]


def _hot_windows(mask: np.ndarray, window: int, threshold: int) -> np.ndarray | None:
    """The pixels of the ``window`` x ``window`` squares of ``mask`` that hold >= ``threshold`` True
    pixels (a mask), or None when there is none.

    A sliding window rather than fixed tiles, so a word cut by a tile edge counts whole."""
    if int(np.count_nonzero(mask)) < threshold:
        return None
    rows, columns = mask.shape
    h, w = min(window, rows), min(window, columns)
    hot = _window_sums(mask, h, w) >= threshold
    if not hot.any():
        return None
    # a pixel is in a hot window when some hot corner lies up to h-1 above and w-1 left of it
    corners = np.zeros((rows + h - 1, columns + w - 1), dtype=bool)
    corners[h - 1 : h - 1 + hot.shape[0], w - 1 : w - 1 + hot.shape[1]] = hot
    return _window_sums(corners, h, w) > 0


def _grow_cells(cells: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Dilate a cell grid by ``rows`` cells up and down and ``columns`` cells left and right."""
    grown = cells
    if rows:
        grown = _shifted_extreme(grown, 2 * rows + 1, 0, True)
    if columns:
        grown = _shifted_extreme(grown, 2 * columns + 1, 1, True)
    return grown


def _cell_boxes(cells: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (row0, column0, row1, column1), in cells, of the 8-connected parts of a grid."""
    seen = np.zeros(cells.shape, dtype=bool)
    boxes = []
    for start in zip(*np.nonzero(cells), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        stack, r0, c0, r1, c1 = [start], start[0], start[1], start[0], start[1]
        while stack:
            r, c = stack.pop()
            r0, c0, r1, c1 = min(r0, r), min(c0, c), max(r1, r), max(c1, c)
            for nr in range(max(r - 1, 0), min(r + 2, cells.shape[0])):
                for nc in range(max(c - 1, 0), min(c + 2, cells.shape[1])):
                    if cells[nr, nc] and not seen[nr, nc]:
                        seen[nr, nc] = True
                        stack.append((nr, nc))
        boxes.append((int(r0), int(c0), int(r1) + 1, int(c1) + 1))
    return boxes


def _at_least(start: int, stop: int, size: int, limit: int) -> tuple[int, int]:
    """[start, stop) widened about its centre to ``size`` (or ``limit``), kept inside [0, limit)."""
    size = min(size, limit)
    if stop - start >= size:
        return start, stop
    start = max(0, min((start + stop - size) // 2, limit - size))
    return start, start + size


def changed_regions(hot: np.ndarray) -> tuple[RedactionBox, ...] | None:
    """Where to detect on a frame whose ``hot`` pixels (in windows with new strokes) sent it: the
    hot pixels grown, nearby ones merged, clipped; None when that is most of the frame."""
    rows, columns = hot.shape
    cells = _cell_counts(hot) > 0
    grown = _grow_cells(cells, -(-GROW_ROWS // CELL), -(-GROW_COLUMNS // CELL))
    boxes = [
        RedactionBox(c0 * CELL, r0 * CELL, min(c1 * CELL, columns), min(r1 * CELL, rows), 1.0, "changed")
        for r0, c0, r1, c1 in _cell_boxes(grown)
    ]
    merged: list[RedactionBox] = []
    while boxes:  # the bounding boxes of parts may overlap once padded: merge until none do
        box = boxes.pop()
        for other in list(merged):
            if box.x0 < other.x1 and other.x0 < box.x1 and box.y0 < other.y1 and other.y0 < box.y1:
                merged.remove(other)
                box = RedactionBox(
                    min(box.x0, other.x0), min(box.y0, other.y0), max(box.x1, other.x1), max(box.y1, other.y1),
                    1.0, "changed",
                )  # fmt: skip
                boxes.append(box)
                break
        else:
            x0, x1 = _at_least(box.x0, box.x1, MIN_REGION, columns)
            y0, y1 = _at_least(box.y0, box.y1, MIN_REGION, rows)
            padded = RedactionBox(x0, y0, x1, y1, 1.0, "changed")
            if padded != box:
                boxes.append(padded)  # padding may make it overlap another: look again
            else:
                merged.append(box)
    if sum(box.area for box in merged) > WHOLE_FRAME_SHARE * rows * columns:
        return None
    return tuple(sorted(merged, key=lambda b: (b.y0, b.x0)))


def _strips_beyond(box: RedactionBox, region: RedactionBox, rows: int, columns: int) -> list[tuple[slice, slice]]:
    """The one-pixel strips just outside each edge of ``region`` that ``box`` reaches (within
    ``EDGE``) and that is not an edge of the frame: where a line of text cut by the crop goes on."""
    strips = []
    along_rows, along_columns = slice(box.y0, box.y1), slice(box.x0, box.x1)
    if region.x0 > 0 and box.x0 <= region.x0 + EDGE:
        strips.append((along_rows, slice(region.x0 - 1, region.x0)))
    if region.x1 < columns and box.x1 >= region.x1 - EDGE:
        strips.append((along_rows, slice(region.x1, region.x1 + 1)))
    if region.y0 > 0 and box.y0 <= region.y0 + EDGE:
        strips.append((slice(region.y0 - 1, region.y0), along_columns))
    if region.y1 < rows and box.y1 >= region.y1 - EDGE:
        strips.append((slice(region.y1, region.y1 + 1), along_columns))
    return strips


def _cell_counts(mask: np.ndarray) -> np.ndarray:
    rows, columns = mask.shape
    padded = np.zeros((-(-rows // CELL) * CELL, -(-columns // CELL) * CELL), dtype=np.int32)
    padded[:rows, :columns] = mask
    return padded.reshape(padded.shape[0] // CELL, CELL, padded.shape[1] // CELL, CELL).sum(axis=(1, 3))


class ChangeSelector:
    """Decides, frame by frame and in order, whether a frame shows text-like content the detector
    has not been shown, and where.

    ``wants(index, rendered)`` must see every frame, in order; when it says yes, ``regions`` says
    where to detect (None: the whole frame), and ``widen()`` records that the whole frame was
    detected after all. ``cover(boxes)`` is told the boxes that will be filled in every frame
    (fixed ones, and each detection's), inside which new strokes need no detection: they are
    removed whatever they say.
    """

    def __init__(self, rows: int, columns: int, always: Iterable[int] = (), margin: int = 0) -> None:
        self.rows, self.columns, self.margin = rows, columns, margin
        self.always = frozenset(always)
        self.regions: tuple[RedactionBox, ...] | None = None
        self._covered = np.zeros((rows, columns), dtype=bool)
        self._sent: FrameSignature | None = None  # per pixel: as the detector last saw it
        self._previous: FrameSignature | None = None
        self._quiet_runs = np.zeros((-(-rows // CELL), -(-columns // CELL)), dtype=np.int32)
        self._transitions = 0

    def cover(self, boxes: Iterable[RedactionBox]) -> None:
        for box in boxes:
            padded = box.padded(self.margin).clipped(self.columns, self.rows)
            if padded is not None:
                self._covered[padded.y0 : padded.y1, padded.x0 : padded.x1] = True

    def wants(self, index: int, rendered: np.ndarray) -> bool:
        signature = frame_signature(rendered)
        hot = None if self._sent is None else self._new_strokes(signature)
        send = index in self.always or self._sent is None or hot is not None
        self.regions = None if (index in self.always or hot is None) else changed_regions(hot)
        self._remember(signature, send)
        return send

    def widen(self) -> None:
        """The frame last wanted was detected whole, not in ``regions``."""
        if self.regions is not None:
            self.regions = None
            assert self._previous is not None
            self._sent = self._previous

    def cut_by_crop(self, box: RedactionBox, region: RedactionBox) -> bool:
        """Whether ``box``, found in the crop ``region``, reaches an edge of it beyond which the
        line it holds may go on unredacted: an edge inside the frame, not already covered there
        (a caption found before and cut by this crop needs no second look)."""
        strips = _strips_beyond(box, region, self.rows, self.columns)
        return any(not self._covered[strip].all() for strip in strips)

    def _new_strokes(self, signature: FrameSignature) -> np.ndarray | None:
        """The hot windows (a mask) with enough changed stroke pixels, or None."""
        assert self._sent is not None
        # A stroke pixel changed when it is a stroke in this frame or in the last sent one and its
        # value moved by about the stroke's contrast: it appeared, went, or became another glyph
        # (a counter's digits share most of their pixels, so "not a stroke before" is not enough).
        # Static text over moving speckle does not change; compression noise is far smaller.
        # Both kinds of change go into the mask: a frame sent for one is detected where either is
        # (what is not shown to the detector is still compared with what it saw there before).
        sent = self._sent
        moved = np.maximum(np.abs(signature.brightness - sent.brightness), np.abs(signature.darkness - sent.darkness))
        uncovered = ~self._covered
        changed = (signature.strong | sent.strong) & (moved >= STRONG) & uncovered
        changed |= (signature.faint | sent.faint) & (moved >= FAINT) & uncovered & self._quiet_pixels()
        return _hot_windows(changed, WINDOW, NEW_PIXELS)

    def _quiet_pixels(self) -> np.ndarray:
        # Early in the cine a cell is quiet once it has been still for every transition seen, and
        # at least one: before any, nothing is known to be still, and calling every cell quiet
        # would send frame 1 of every moving cine. Faint text appearing in frame 1 is sent
        # once its cell has been still for QUIET_FRAMES frames (it differs from the sent frame).
        quiet_cells = self._quiet_runs >= max(1, min(QUIET_FRAMES, self._transitions))
        padded = np.pad(quiet_cells, 1, mode="edge")
        for dy in range(3):
            for dx in range(3):
                quiet_cells = quiet_cells & padded[dy : dy + quiet_cells.shape[0], dx : dx + quiet_cells.shape[1]]
        full = np.repeat(np.repeat(quiet_cells, CELL, axis=0), CELL, axis=1)
        return full[: self.rows, : self.columns]

    def _remember(self, signature: FrameSignature, sent: bool) -> None:
        if self._previous is not None:
            moved = np.abs(signature.brightness - self._previous.brightness) > NOISE
            self._quiet_runs = np.where(_cell_counts(moved) > QUIET_NOISE, 0, self._quiet_runs + 1)
            self._transitions += 1
        self._previous = signature
        if not sent:
            return
        if self._sent is None or self.regions is None:
            self._sent = signature
            return
        # the detector sees the regions only: elsewhere the baseline stays what it saw before
        parts = {}
        for name in ("faint", "strong", "brightness", "darkness"):
            part = getattr(self._sent, name).copy()
            for box in self.regions:
                part[box.y0 : box.y1, box.x0 : box.x1] = getattr(signature, name)[box.y0 : box.y1, box.x0 : box.x1]
            parts[name] = part
        self._sent = FrameSignature(**parts)


class DetectionFrames:
    """The frames to detect on, as ``policy.frame_sampling`` says, decoded and rendered.

    "sample" and "all": the frames of ``policy.frames_to_detect``, and only those are decoded.
    "changes": those (the fixed samples) and every frame the ``ChangeSelector`` wants; every frame
    is decoded and rendered to judge it, one at a time.

    Iterating yields (index, stored frame, photometric, rendered frame, regions): ``regions`` are
    where to detect, in frame coordinates (None: the whole frame; a fixed sample always is). The
    caller detects with ``detect``, which crops, shifts the boxes back, detects the whole frame
    again when a box touches a crop's edge, and reports the boxes (``found``) so that later frames
    are judged against them. ``detected`` lists the frames yielded.
    """

    def __init__(
        self, ds: Dataset, policy: PixelPolicy, frame_count: int, fixed_boxes: Iterable[RedactionBox] = ()
    ) -> None:
        self.ds = ds
        self.frame_count = frame_count
        self.fixed = frames_to_detect(frame_count, policy)
        self.selector: ChangeSelector | None = None
        if policy.frame_sampling == "changes" and frame_count > len(self.fixed):
            self.selector = ChangeSelector(int(ds.Rows), int(ds.Columns), self.fixed, policy.margin)
            self.selector.cover(fixed_boxes)
        self.detected: list[int] = []

    def found(self, boxes: Iterable[RedactionBox]) -> None:
        if self.selector is not None:
            self.selector.cover(boxes)

    def detect(
        self,
        detector: TextDetector,
        rendered: np.ndarray,
        regions: tuple[RedactionBox, ...] | None,
        text_filter: TextFilter | None = None,
    ) -> list[RedactionBox]:
        """The boxes on the frame just yielded, detected in ``regions`` (None: whole), in frame
        coordinates; reported to ``found``."""
        boxes: list[RedactionBox] = []
        if regions and len(regions) > 1 and not hasattr(detector, "read_crop"):
            # a service bills per image, whatever its size (Rekognition): one call for all regions
            regions = (
                RedactionBox(
                    min(r.x0 for r in regions),
                    min(r.y0 for r in regions),
                    max(r.x1 for r in regions),
                    max(r.y1 for r in regions),
                    1.0,
                    "changed",
                ),
            )
        for region in regions or (None,):
            here = detect_text(detector, rendered, text_filter, region)
            selector = self.selector
            if region is not None and selector is not None and any(selector.cut_by_crop(b, region) for b in here):
                # a line of text may run on outside the crop: look at all of it
                selector.widen()
                boxes = detect_text(detector, rendered, text_filter)
                break
            boxes.extend(here)
        self.found(boxes)
        return boxes

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, str, np.ndarray, tuple[RedactionBox, ...] | None]]:
        indices = range(self.frame_count) if self.selector is not None else self.fixed
        for index, frame, photometric in iter_decoded_frames(self.ds, indices):
            rendered = render_for_detection(frame, self.ds, photometric, index)
            if self.selector is None or self.selector.wants(index, rendered):
                self.detected.append(index)
                yield index, frame, photometric, rendered, None if self.selector is None else self.selector.regions
