"""What a rules file compiles to: the RuleSet, its transformations, and the plan for one instance."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from ..profile import ProfileOptions
from ..pseudonym import MAX_SHIFT_DAYS, MIN_SHIFT_DAYS
from .query import Query
from .tagpattern import PathStep, TagPattern

ALL_LABEL = "ALL"
# The accept section's defaults: the largest file read, and what a pixel scan may decode (checked
# before decoding).
MAX_FILE_BYTES = 64 * 1024**3  # streamed: memory does not grow with the file (see parts.py)
MAX_DECODED_BYTES = 1024**3


@dataclass(frozen=True)
class Scope:
    labels: frozenset[str] = frozenset({ALL_LABEL})
    except_labels: frozenset[str] = frozenset()
    categories: frozenset[str] = frozenset()
    except_categories: frozenset[str] = frozenset()

    def matches(self, labels: set[str], categories: set[str]) -> bool:
        if labels & self.except_labels or categories & self.except_categories:
            return False
        return bool(labels & self.labels or categories & self.categories)


@dataclass(frozen=True)
class ElementRule:
    """One transformation entry; `kind` is keep, shift_datetime, randomize_text, randomize_uid,
    remove or empty. `origin` points back into the rules file for `explain`."""

    kind: str
    patterns: tuple[TagPattern, ...]
    except_patterns: tuple[TagPattern, ...]
    origin: str
    shift_by: int = 0
    reuse_mapping: str | None = None
    split: str | None = None
    ignore_case: bool = False

    def matches(self, path: tuple[PathStep, ...]) -> bool:
        return any(p.matches(path) for p in self.patterns) and not any(p.matches(path) for p in self.except_patterns)


@dataclass(frozen=True)
class AddTag:
    tag: int
    vr: str
    value: str
    overwrite_if_exists: bool
    origin: str


@dataclass(frozen=True)
class BurnedInRule:
    type: str  # "ocr" | "manual"
    boxes: tuple[tuple[int, int, int, int], ...]
    detector: str | None
    origin: str


@dataclass(frozen=True)
class Transformation:
    scope: Scope
    element_rules: tuple[ElementRule, ...]
    add_tags: tuple[AddTag, ...]
    burned_in: tuple[BurnedInRule, ...]
    transcode: str | None
    origin: str


@dataclass(frozen=True)
class InstancePlan:
    """What the rules say about one instance, once its labels are known."""

    labels: frozenset[str]
    forward: bool
    element_rules: tuple[ElementRule, ...]  # highest precedence first
    add_tags: tuple[AddTag, ...]
    burned_in: tuple[BurnedInRule, ...]
    transcode: str | None


@dataclass(frozen=True)
class RuleSet:
    options: ProfileOptions = field(default_factory=ProfileOptions)
    min_shift_days: int = MIN_SHIFT_DAYS
    max_shift_days: int = MAX_SHIFT_DAYS
    safe_private: tuple[TagPattern, ...] = ()
    accept_sop_classes: frozenset[str] = frozenset()
    max_file_bytes: int = MAX_FILE_BYTES
    max_decoded_bytes: int = MAX_DECODED_BYTES
    labels: tuple[tuple[str, Query], ...] = ()
    categories: tuple[tuple[str, frozenset[str]], ...] = ()
    scope_to_forward: Scope = Scope()
    transformations: tuple[Transformation, ...] = ()
    pixels: tuple[tuple[str, Any], ...] = ()  # PixelPolicy fields from the `pixels:` section
    source: str = "built-in"

    def plan_for(self, ds: Dataset) -> InstancePlan:
        labels = {ALL_LABEL} | {name for name, query in self.labels if query.evaluate(ds)}
        categories = {name for name, members in self.categories if labels & members}
        active = [t for t in self.transformations if t.scope.matches(labels, categories)]
        # Later transformations override earlier ones; within one, its own order (delete last) wins.
        element_rules = tuple(r for t in reversed(active) for r in reversed(t.element_rules))
        transcode = next((t.transcode for t in reversed(active) if t.transcode), None)
        return InstancePlan(
            labels=frozenset(labels),
            forward=self.scope_to_forward.matches(labels, categories),
            element_rules=element_rules,
            add_tags=tuple(a for t in active for a in t.add_tags),
            burned_in=tuple(b for t in active for b in t.burned_in),
            transcode=transcode,
        )
