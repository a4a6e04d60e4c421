"""Tag path patterns, the research-pacs-on-aws syntax the rules language uses to name elements.

PatientName             a keyword at the top level; `*` is a wildcard (`*Date`)
00100010, 0023XXXX      eight hex digits; X is any digit, @ any odd digit (XXX@XXXX: private)
0029{SIEMENS CSA}XX     private elements of that creator in that group, by element byte
{PN}                    every element of that VR
Seq.Keyword             steps through sequences, matched from the innermost element outwards
*/...  +/...            anywhere / anywhere but the top level (no prefix: top level only)
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword

_KEYWORD = re.compile(r"^[A-Za-z0-9*]+$")
_NUMBER = re.compile(r"^[0-9A-FX@]{8}$")
_PRIVATE = re.compile(r"^([0-9A-FX@]{4})\{([^}]+)\}([0-9A-FX@]{2})$")
_VR = re.compile(r"^\{([A-Z]{2})\}$")
_ODD = frozenset("13579BDF")


@dataclass(frozen=True)
class PathStep:
    """One element on the way from the top-level dataset to an element."""

    tag: int
    keyword: str
    vr: str
    creator: str | None = None

    @property
    def hex(self) -> str:
        return f"{self.tag:08X}"


def _hex_matches(pattern: str, digits: str) -> bool:
    return all(p == "X" or p == d or (p == "@" and d in _ODD) for p, d in zip(pattern, digits, strict=True))


@dataclass(frozen=True)
class _Step:
    kind: str  # keyword | number | private | vr
    text: str
    creator: str = ""
    element: str = ""

    def matches(self, step: PathStep) -> bool:
        if self.kind == "keyword":
            return bool(step.keyword) and fnmatch.fnmatchcase(step.keyword, self.text)
        if self.kind == "number":
            return _hex_matches(self.text, step.hex)
        if self.kind == "vr":
            return step.vr == self.text
        return (
            step.creator == self.creator
            and _hex_matches(self.text, step.hex[:4])
            and _hex_matches(self.element, step.hex[-2:])
        )


def _parse_step(text: str) -> _Step:
    if _NUMBER.match(text):
        return _Step("number", text)
    match = _PRIVATE.match(text)
    if match:
        return _Step("private", match.group(1), creator=match.group(2), element=match.group(3))
    match = _VR.match(text)
    if match:
        return _Step("vr", match.group(1))
    if _KEYWORD.match(text):
        # A misspelt keyword would silently match nothing (a keep or delete rule that never fires).
        if "*" not in text and tag_for_keyword(text) is None:
            raise ValueError(f"{text!r} is not a DICOM keyword")
        return _Step("keyword", text)
    raise ValueError(
        f"{text!r} is not a keyword, an 8-digit hex tag (X, @ wildcards), gggg{{Private Creator}}ee or {{VR}}"
    )


@dataclass(frozen=True)
class TagPattern:
    text: str
    anchor: str  # "" top level only, "*/" anywhere, "+/" nested only
    steps: tuple[_Step, ...]

    def matches(self, path: tuple[PathStep, ...]) -> bool:
        n = len(self.steps)
        if self.anchor == "" and len(path) != n:
            return False
        if self.anchor == "+/" and len(path) <= n:
            return False
        if len(path) < n:
            return False
        return all(step.matches(element) for step, element in zip(self.steps, path[-n:], strict=True))


def parse_tag_pattern(text: str) -> TagPattern:
    """Parse a tag path pattern; ValueError names what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a tag pattern must be a non-empty string")
    body = text.strip()
    anchor = ""
    if body[:2] in ("*/", "+/"):
        anchor, body = body[:2], body[2:]
    # Split on dots outside {private creator} braces: creators may contain dots.
    parts = re.findall(r"(?:[^.{]|\{[^}]*\})+", body)
    if not parts or "".join(parts) != body.replace(".", "", len(parts) - 1):
        raise ValueError(f"{text!r}: empty step in the path")
    return TagPattern(text, anchor, tuple(_parse_step(p) for p in parts))
