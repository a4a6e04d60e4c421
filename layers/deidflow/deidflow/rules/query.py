"""DICOM instance queries (research-pacs `DICOMQueryFilter`): conditions joined by AND / OR.

    Modality StrEquals CT AND (Rows NbGreater 500 OR ImageType StrEquals "*LOCALIZER*")

A tag is a keyword, 8 hex digits, or a dotted path through sequences (any item matches).
Operators: Exists, NotExists, Empty, NotEmpty, StrEquals, StrNotEquals (case-insensitive, `*`
wildcard), NbEquals, NbNotEquals, NbGreater, NbLess. AND binds tighter than OR.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

OPERATORS_WITHOUT_VALUE = {"Exists", "NotExists", "Empty", "NotEmpty"}
OPERATORS_WITH_VALUE = {"StrEquals", "StrNotEquals", "NbEquals", "NbNotEquals", "NbGreater", "NbLess"}
_TOKEN = re.compile(r'\s*(?:(\()|(\))|"((?:[^"\\]|\\.)*)"|([^\s()"]+))')


class QueryError(ValueError):
    pass


@dataclass(frozen=True)
class Condition:
    path: tuple[int, ...]
    operator: str
    value: str | None

    def evaluate(self, ds: Dataset) -> bool:
        values = list(_values_at(ds, self.path))
        op = self.operator
        if op == "Exists":
            return bool(values)
        if op == "NotExists":
            return not values
        flat = [v for value in values for v in _as_list(value)]
        if op == "Empty":
            return any(v in (None, "") for v in flat) or any(_is_empty(v) for v in values)
        if op == "NotEmpty":
            return any(v not in (None, "") for v in flat)
        assert self.value is not None
        if op in ("StrEquals", "StrNotEquals"):
            pattern = self.value.lower()
            hits = [fnmatch.fnmatchcase(str(v).strip().lower(), pattern) for v in flat if v is not None]
            return any(hits) if op == "StrEquals" else any(not h for h in hits)
        target = float(self.value)
        numbers = [n for n in (_as_number(v) for v in flat) if n is not None]
        compare = {
            "NbEquals": lambda n: n == target,
            "NbNotEquals": lambda n: n != target,
            "NbGreater": lambda n: n > target,
            "NbLess": lambda n: n < target,
        }[op]
        return any(compare(n) for n in numbers)


@dataclass(frozen=True)
class BoolOp:
    op: str  # "AND" | "OR"
    parts: tuple[Query, ...]

    def evaluate(self, ds: Dataset) -> bool:
        results = (p.evaluate(ds) for p in self.parts)
        return all(results) if self.op == "AND" else any(results)


Query = Condition | BoolOp


def _is_empty(value: object) -> bool:
    return value is None or value == "" or (isinstance(value, (list, MultiValue)) and len(value) == 0)


def _as_list(value: object) -> list[object]:
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _as_number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _values_at(ds: Dataset, path: tuple[int, ...]) -> Iterator[object]:
    head, rest = path[0], path[1:]
    if head not in ds:
        return
    element = ds[head]
    if not rest:
        yield element.value
        return
    if element.VR != "SQ":
        return
    for item in element.value:
        yield from _values_at(item, rest)


def _parse_tag(text: str) -> tuple[int, ...]:
    path: list[int] = []
    for part in text.split("."):
        if re.fullmatch(r"[0-9A-Fa-f]{8}", part):
            path.append(int(part, 16))
            continue
        tag = tag_for_keyword(part)
        if tag is None:
            raise QueryError(f"unknown keyword {part!r}")
        path.append(tag)
    return tuple(path)


def _tokens(text: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise QueryError(f"cannot read the query at character {pos + 1}")
        lpar, rpar, quoted, bare = match.groups()
        tokens.append("(" if lpar else ")" if rpar else f'"{quoted}' if quoted is not None else bare)
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens


class _Parser:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise QueryError("the query ends too early")
        self.pos += 1
        return token

    def parse_or(self) -> Query:
        parts = [self.parse_and()]
        while self.peek() == "OR":
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def parse_and(self) -> Query:
        parts = [self.parse_atom()]
        while self.peek() == "AND":
            self.take()
            parts.append(self.parse_atom())
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def parse_atom(self) -> Query:
        token = self.take()
        if token == "(":
            inner = self.parse_or()
            if self.take() != ")":
                raise QueryError("missing closing parenthesis")
            return inner
        if token in (")", "AND", "OR") or token.startswith('"'):
            raise QueryError(f"expected a tag, found {token.lstrip(chr(34))!r}")
        path = _parse_tag(token)
        operator = self.take()
        if operator in OPERATORS_WITHOUT_VALUE:
            return Condition(path, operator, None)
        if operator not in OPERATORS_WITH_VALUE:
            raise QueryError(f"unknown operator {operator!r}")
        value = self.take()
        value = value[1:].replace('\\"', '"') if value.startswith('"') else value
        if operator.startswith("Nb") and _as_number(value) is None:
            raise QueryError(f"{operator} needs a number, not {value!r}")
        return Condition(path, operator, value)


def parse_query(text: str) -> Query:
    parser = _Parser(_tokens(text))
    query = parser.parse_or()
    if parser.peek() is not None:
        raise QueryError(f"unexpected {parser.peek()!r} after a complete condition")
    return query
