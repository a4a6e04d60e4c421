"""The labelled set for burned-in text: frames whose text is known, to measure precision and recall.

Three parts, each a list of ``Labelled`` frames (rendered 8-bit RGB, as detectors see them):

* ``synthetic_text()``: captions in many fonts, sizes, colours and contrasts, on ultrasound speckle
  and on flat backgrounds; the exact mask of text pixels comes with each frame;
* ``synthetic_no_text()``: frames without text but with what detectors take for text: anatomy
  blobs (a bone scan's head and bladder), colour Doppler, ECG traces, rulers, a drawn face;
* ``real_labelled()``: real files other projects ship, with their text regions marked by hand in
  tests/data/burned_in_labels.yaml (``text: []`` marks a file with no text at all).

``score(frame, boxes)`` turns a detector's boxes into the figures the benchmark prints and the
tests bound: text pixels removed and false-positive pixels (redacted where there is no text).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import yaml
from pixel_testdata import TextSpec, draw_text, ultrasound_background

REPO = Path(__file__).resolve().parents[3]
LABELS = REPO / "tests" / "data" / "burned_in_labels.yaml"


@dataclass(frozen=True)
class Labelled:
    name: str
    frame: np.ndarray  # (rows, columns, 3) uint8, as rendered for detection
    text: np.ndarray  # bool (rows, columns): where text is (glyph pixels, or hand-marked regions)
    kind: str  # "text" or "no-text"
    marks: np.ndarray | None = None  # marks that are not words: neither required nor a false positive


@dataclass(frozen=True)
class Score:
    text_pixels: int
    text_removed: int  # text pixels under a redaction box
    redacted: int  # pixels under a redaction box
    false_positive: int  # redacted pixels away from any text (beyond ``slack`` pixels)
    boxes: int

    @property
    def recall(self) -> float:
        return self.text_removed / self.text_pixels if self.text_pixels else 1.0


def score(item: Labelled, boxes: list, margin: int = 4, slack: int = 12) -> Score:
    """Pixels of text removed and pixels redacted away from text, for ``boxes`` (+ ``margin``).

    ``slack``: redaction within this many pixels of text is not counted as a false positive
    (a box drawn around a line of text necessarily covers the background between its glyphs).
    """
    rows, columns = item.text.shape
    redacted = np.zeros((rows, columns), dtype=bool)
    for box in boxes:
        grown = box.padded(margin).clipped(columns, rows)
        if grown is not None:
            redacted[grown.y0 : grown.y1, grown.x0 : grown.x1] = True
    near_text = cv2.dilate(item.text.astype(np.uint8), np.ones((2 * slack + 1, 2 * slack + 1), np.uint8)) > 0
    if item.marks is not None:
        near_text |= item.marks
    return Score(
        text_pixels=int(item.text.sum()),
        text_removed=int((redacted & item.text).sum()),
        redacted=int(redacted.sum()),
        false_positive=int((redacted & ~near_text).sum()),
        boxes=len(boxes),
    )


# Fonts, sizes, colours and contrasts: bitmap and scalable fonts, 8 to 40 px, white, yellow,
# green, cyan, grey; low contrast (dark grey on black) too.
TEXT_SETS: tuple[tuple[str, str, tuple[TextSpec, ...]], ...] = (
    (
        "us-mixed-fonts",
        "ultrasound",
        (
            TextSpec("DOE JANE", 8, 6, "aileron", 20),
            TextSpec("DOB 1961-03-02", 250, 6, "hershey-simplex", 6, (255, 255, 0)),
            TextSpec("MRN 00471139", 8, 40, "pil-bitmap", 11, (0, 255, 0)),
            TextSpec("ELSEWHERE HOSPITAL", 360, 440, "hershey-duplex", 5, (0, 255, 255)),
            TextSpec("ACC 120907058", 8, 448, "aileron", 14, (200, 200, 200)),
        ),
    ),
    (
        "us-sizes",
        "ultrasound",
        (
            TextSpec("ROE RICHARD", 10, 10, "aileron", 40),
            TextSpec("ID 5521907", 10, 70, "aileron", 9),
            TextSpec("WARD 12", 500, 10, "hershey-plain", 9, (255, 128, 0)),
            TextSpec("08:48:26", 540, 450, "aileron", 12, (128, 128, 255)),
        ),
    ),
    (
        "us-low-contrast",
        "ultrasound",
        (
            TextSpec("MOUSE MICKEY", 10, 8, "aileron", 18, (95, 95, 95)),
            TextSpec("2019-07-04", 470, 8, "hershey-simplex", 5, (90, 90, 140)),
            TextSpec("ST ELSEWHERE", 10, 450, "pil-bitmap", 11, (110, 110, 110)),
        ),
    ),
    (
        "flat-dark-ink",
        "flat",
        (
            TextSpec("BLOGGS FRED", 8, 6, "aileron", 20, (0, 0, 0)),
            TextSpec("MRN 33120045", 300, 6, "hershey-complex", 6, (0, 0, 160)),
            TextSpec("CARDIOLOGY", 8, 440, "pil-bitmap", 11, (60, 0, 0)),
            TextSpec("KIDNEY L", 250, 220, "hershey-duplex", 7, (0, 90, 0)),
        ),
    ),
)


def _frame_with(texts: tuple[TextSpec, ...], background: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rows, columns = 480, 640
    rng = np.random.default_rng(seed)
    grey = ultrasound_background(rows, columns, rng) if background == "ultrasound" else np.full((rows, columns), 205)
    frame = np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)
    mask = np.zeros((rows, columns), dtype=bool)
    for spec in texts:
        draw_text(frame, mask, spec)
    return frame, mask


def synthetic_text() -> list[Labelled]:
    return [
        Labelled(name, *_frame_with(texts, background, seed), "text")
        for seed, (name, background, texts) in enumerate(TEXT_SETS)
    ]


def _smooth_noise(rng: np.random.Generator, rows: int, columns: int, scale: int) -> np.ndarray:
    small = rng.normal(size=(max(rows // scale, 2), max(columns // scale, 2)))
    return cv2.resize(small, (columns, rows), interpolation=cv2.INTER_CUBIC)


def bone_scan(rng: np.random.Generator) -> np.ndarray:
    """A whole-body bone scan: a dim body, a bright skull, spine and a very bright bladder."""
    rows, columns = 1024, 256
    image = np.zeros((rows, columns), dtype=np.float64)
    yy, xx = np.mgrid[0:rows, 0:columns]

    def blob(cy: float, cx: float, ry: float, rx: float, level: float) -> None:
        image[...] += level * np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))

    blob(90, 128, 40, 30, 150)  # skull
    blob(420, 128, 330, 70, 40)  # trunk
    for y in range(180, 560, 24):
        blob(y, 128, 9, 7, 90)  # vertebrae
    blob(600, 128, 18, 22, 240)  # bladder
    blob(800, 100, 200, 18, 35)  # legs
    blob(800, 156, 200, 18, 35)
    counts = rng.poisson(np.clip(image, 0, 255) / 4) * 4  # counting noise
    return np.clip(counts, 0, 255).astype(np.uint8)


def doppler(rng: np.random.Generator) -> np.ndarray:
    """A small B-mode sector with a colour-flow box of red and blue, no text."""
    rows, columns = 240, 320
    grey = ultrasound_background(rows, columns, rng)
    frame = np.repeat(grey[:, :, None], 3, axis=2)
    flow = _smooth_noise(rng, 90, 110, 12)
    red, blue = flow > 0.3, flow < -0.3
    region = frame[60:150, 100:210]
    region[red] = np.stack([200 + 50 * np.clip(flow[red], 0, 1), 40 * flow[red], 0 * flow[red]], axis=-1)
    region[blue] = np.stack([0 * flow[blue], 60 * -flow[blue], 200 + 50 * np.clip(-flow[blue], 0, 1)], axis=-1)
    cv2.rectangle(frame, (100, 60), (210, 150), (200, 200, 200), 1)
    return frame


def ecg_trace(rng: np.random.Generator) -> np.ndarray:
    """An echo with an ECG trace along the bottom: a thin green line with QRS spikes."""
    rows, columns = 480, 640
    frame = np.repeat(ultrasound_background(rows, columns, rng)[:, :, None], 3, axis=2)
    x = np.arange(60, 580)
    beat = (x - 60) % 130
    y = 440 - 3 * np.sin(x / 9.0)
    y -= np.where((beat > 40) & (beat < 46), 30 * np.sin((beat - 40) / 6 * np.pi), 0)
    y += np.where((beat > 70) & (beat < 90), 6 * np.sin((beat - 70) / 20 * np.pi), 0)
    points = np.stack([x, y], axis=1).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(frame, [points], False, (0, 220, 0), 1, cv2.LINE_AA)
    return frame


def ruler(rng: np.random.Generator) -> np.ndarray:
    """A depth scale beside the sector: a line of ticks and dots, no numbers."""
    rows, columns = 480, 640
    frame = np.repeat(ultrasound_background(rows, columns, rng)[:, :, None], 3, axis=2)
    cv2.line(frame, (600, 40), (600, 440), (180, 180, 180), 1)
    for index, y in enumerate(range(40, 441, 20)):
        length = 10 if index % 5 == 0 else 5
        cv2.line(frame, (600 - length, y), (600, y), (200, 200, 200), 1)
    for y in range(50, 440, 40):
        cv2.circle(frame, (80, y), 2, (230, 230, 230), -1)
    return frame


def drawn_face(rng: np.random.Generator) -> np.ndarray:
    """A shaded face on a textured background, as in a clinical photograph (no text)."""
    rows, columns = 400, 400
    background = 90 + 25 * _smooth_noise(rng, rows, columns, 20)
    frame = np.repeat(np.clip(background, 0, 255)[:, :, None], 3, axis=2).astype(np.uint8)
    yy, xx = np.mgrid[0:rows, 0:columns]
    face = ((yy - 200) / 130) ** 2 + ((xx - 200) / 100) ** 2 < 1
    shade = np.clip(1.1 - 0.5 * ((xx - 170) / 120) ** 2, 0.5, 1.0)
    for channel, level in enumerate((225, 180, 150)):
        frame[..., channel] = np.where(face, np.clip(level * shade, 0, 255), frame[..., channel])
    for cx in (160, 240):
        cv2.ellipse(frame, (cx, 170), (18, 9), 0, 0, 360, (60, 40, 30), -1)
        cv2.ellipse(frame, (cx, 150), (24, 5), 0, 180, 360, (70, 50, 40), 3)
    cv2.ellipse(frame, (200, 275), (40, 14), 0, 0, 180, (150, 60, 60), 4)
    cv2.line(frame, (200, 190), (192, 240), (170, 130, 110), 3)
    return cv2.GaussianBlur(frame, (5, 5), 0)


NO_TEXT = {"bone-scan": bone_scan, "doppler": doppler, "ecg-trace": ecg_trace, "ruler": ruler, "face": drawn_face}


def synthetic_no_text() -> list[Labelled]:
    found = []
    for seed, (name, make) in enumerate(NO_TEXT.items()):
        image = make(np.random.default_rng(500 + seed))
        frame = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
        found.append(Labelled(name, np.ascontiguousarray(frame), np.zeros(frame.shape[:2], dtype=bool), "no-text"))
    return found


@cache
def labels() -> dict[str, dict]:
    """The hand-marked real files: ``source/name`` -> {frame, text: [[x0, y0, x1, y1], ...], marks: [...]}."""
    return yaml.safe_load(LABELS.read_text())["files"]


def real_labelled(kind: str | None = None) -> list[Labelled]:
    """The labelled real files present on this machine (a source that is not installed is skipped)."""
    sys.path.insert(0, str(REPO))
    from deidflow.pixels import decode_frame, render_for_detection
    from pydicom import dcmread

    from tests.realfiles import real_files, source_of

    present = {f"{source_of(path)}/{path.name}": path for path in real_files()}
    found = []
    for key, label in labels().items():
        item_kind = "text" if label.get("text") else "no-text"
        if key not in present or (kind and item_kind != kind):
            continue
        ds = dcmread(present[key])
        index = int(label.get("frame", 0))
        stored, photometric = decode_frame(ds, index)
        frame = render_for_detection(stored, ds, photometric, index)
        found.append(
            Labelled(key, frame, _regions(frame, label.get("text")), item_kind, _regions(frame, label.get("marks")))
        )
    return found


def _regions(frame: np.ndarray, boxes: list | None) -> np.ndarray:
    mask = np.zeros(frame.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes or ():
        mask[y0:y1, x0:x1] = True
    return mask


def real_path(key: str) -> Path | None:
    sys.path.insert(0, str(REPO))
    from tests.realfiles import real_files, source_of

    return next((path for path in real_files() if f"{source_of(path)}/{path.name}" == key), None)
