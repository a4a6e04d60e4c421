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
from .policy import PixelPolicy, frames_to_detect
from .render import iter_decoded_frames, render_for_detection

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


def _some_window_holds(mask: np.ndarray, window: int, threshold: int) -> bool:
    """Whether some ``window`` x ``window`` square of ``mask`` holds >= ``threshold`` True pixels.

    A sliding window rather than fixed tiles, so a word cut by a tile edge counts whole."""
    if int(np.count_nonzero(mask)) < threshold:
        return False
    rows, columns = mask.shape
    integral = np.zeros((rows + 1, columns + 1), dtype=np.int32)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int32), axis=1, out=integral[1:, 1:])
    h, w = min(window, rows), min(window, columns)
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    return bool(sums.max() >= threshold)


def _cell_counts(mask: np.ndarray) -> np.ndarray:
    rows, columns = mask.shape
    padded = np.zeros((-(-rows // CELL) * CELL, -(-columns // CELL) * CELL), dtype=np.int32)
    padded[:rows, :columns] = mask
    return padded.reshape(padded.shape[0] // CELL, CELL, padded.shape[1] // CELL, CELL).sum(axis=(1, 3))


class ChangeSelector:
    """Decides, frame by frame and in order, whether a frame shows text-like content the detector
    has not been shown.

    ``wants(index, rendered)`` must see every frame, in order; ``cover(boxes)`` is told the boxes
    that will be filled in every frame (fixed ones, and each detection's), inside which new
    strokes need no detection: they are removed whatever they say.
    """

    def __init__(self, rows: int, columns: int, always: Iterable[int] = (), margin: int = 0) -> None:
        self.rows, self.columns, self.margin = rows, columns, margin
        self.always = frozenset(always)
        self._covered = np.zeros((rows, columns), dtype=bool)
        self._sent: FrameSignature | None = None
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
        send = index in self.always or self._sent is None or self._shows_new_strokes(signature)
        self._remember(signature, send)
        return send

    def _shows_new_strokes(self, signature: FrameSignature) -> bool:
        assert self._sent is not None
        # A stroke pixel changed when it is a stroke in this frame or in the last sent one and its
        # value moved by about the stroke's contrast: it appeared, went, or became another glyph
        # (a counter's digits share most of their pixels, so "not a stroke before" is not enough).
        # Static text over moving speckle does not change; compression noise is far smaller.
        sent = self._sent
        moved = np.maximum(np.abs(signature.brightness - sent.brightness), np.abs(signature.darkness - sent.darkness))
        uncovered = ~self._covered
        changed = (signature.strong | sent.strong) & (moved >= STRONG) & uncovered
        if _some_window_holds(changed, WINDOW, NEW_PIXELS):
            return True
        changed |= (signature.faint | sent.faint) & (moved >= FAINT) & uncovered & self._quiet_pixels()
        return _some_window_holds(changed, WINDOW, NEW_PIXELS)

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
        if sent:
            self._sent = signature


class DetectionFrames:
    """The frames to detect on, as ``policy.frame_sampling`` says, decoded and rendered.

    "sample" and "all": the frames of ``policy.frames_to_detect``, and only those are decoded.
    "changes": those (the fixed samples) and every frame the ``ChangeSelector`` wants; every frame
    is decoded and rendered to judge it, one at a time.

    Iterating yields (index, stored frame, photometric, rendered frame); between two yields the
    caller reports the boxes the detector found (``found``), so that later frames are judged
    against them. ``detected`` lists the frames yielded.
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

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, str, np.ndarray]]:
        indices = range(self.frame_count) if self.selector is not None else self.fixed
        for index, frame, photometric in iter_decoded_frames(self.ds, indices):
            rendered = render_for_detection(frame, self.ds, photometric, index)
            if self.selector is None or self.selector.wants(index, rendered):
                self.detected.append(index)
                yield index, frame, photometric, rendered
