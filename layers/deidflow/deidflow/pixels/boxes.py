"""Redaction boxes: the one currency every detector and policy trades in."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RedactionBox:
    """An axis-aligned rectangle in frame pixel coordinates, half-open: [x0, x1) x [y0, y1).

    ``source`` says where the box came from ("ocr", "rekognition", "tesseract", "manual",
    "device-signature:<name>") so reports can explain why pixels were blanked.
    """

    x0: int
    y0: int
    x1: int
    y1: int
    confidence: float = 1.0
    source: str = "manual"

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"RedactionBox.{name} must be an int, got {type(value).__name__}")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError("RedactionBox needs x0 <= x1 and y0 <= y1")

    @classmethod
    def from_xywh(
        cls, x: int, y: int, width: int, height: int, confidence: float = 1.0, source: str = "manual"
    ) -> RedactionBox:
        return cls(int(x), int(y), int(x) + int(width), int(y) + int(height), confidence, source)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def is_empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def padded(self, margin: int) -> RedactionBox:
        """Grow by ``margin`` pixels on every side (not clipped: call ``clipped`` next)."""
        return replace(self, x0=self.x0 - margin, y0=self.y0 - margin, x1=self.x1 + margin, y1=self.y1 + margin)

    def shifted(self, dx: int, dy: int) -> RedactionBox:
        return replace(self, x0=self.x0 + dx, y0=self.y0 + dy, x1=self.x1 + dx, y1=self.y1 + dy)

    def clipped(self, columns: int, rows: int) -> RedactionBox | None:
        """The part inside a ``columns`` x ``rows`` frame, or None when nothing is left."""
        x0, y0 = max(self.x0, 0), max(self.y0, 0)
        x1, y1 = min(self.x1, columns), min(self.y1, rows)
        if x1 <= x0 or y1 <= y0:
            return None
        return replace(self, x0=x0, y0=y0, x1=x1, y1=y1)

    def contains(self, other: RedactionBox) -> bool:
        return self.x0 <= other.x0 and self.y0 <= other.y0 and self.x1 >= other.x1 and self.y1 >= other.y1

    def as_dict(self) -> dict[str, object]:
        return {
            "x0": self.x0,
            "y0": self.y0,
            "x1": self.x1,
            "y1": self.y1,
            "confidence": round(float(self.confidence), 4),
            "source": self.source,
        }


def box_from_points(points: Iterable[Iterable[float]], confidence: float, source: str) -> RedactionBox:
    """The bounding box of a polygon (e.g. a rotated text quadrilateral), rounded outwards."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in points:
        xs.append(float(x))
        ys.append(float(y))
    # floor/ceil outwards so rounding never uncovers an edge of a glyph
    x0, y0 = int(min(xs) // 1), int(min(ys) // 1)
    x1, y1 = -int(-max(xs) // 1) + 1, -int(-max(ys) // 1) + 1
    return RedactionBox(x0, y0, x1, y1, float(confidence), source)


def merge_boxes(boxes: Iterable[RedactionBox]) -> list[RedactionBox]:
    """Drop duplicates and boxes fully inside another one, keeping a stable order.

    The same caption detected on 12 sampled frames of a cine yields near-identical boxes; the
    union to redact is unchanged by dropping contained ones, and reports stay readable.
    """
    kept: list[RedactionBox] = []
    for box in sorted(boxes, key=lambda b: (-b.area, b.y0, b.x0, b.y1, b.x1, b.source)):
        if box.is_empty or any(k.contains(box) for k in kept):
            continue
        kept.append(box)
    return sorted(kept, key=lambda b: (b.y0, b.x0, b.y1, b.x1))
