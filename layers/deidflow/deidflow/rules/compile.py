"""A parsed rules file to a RuleSet: the checks the schema cannot express, one section at a time."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.pixels import get_encoder

from ..profile import ProfileOptions
from ..pseudonym import MAX_SHIFT_DAYS, MIN_SHIFT_DAYS
from ..tags import WRITABLE_NATIVE_SYNTAXES, in_dictionary
from .model import (
    ALL_LABEL,
    MAX_DECODED_BYTES,
    MAX_FILE_BYTES,
    AddTag,
    BurnedInRule,
    ElementRule,
    RuleSet,
    Scope,
    Transformation,
)
from .query import Query, QueryError, parse_query
from .research_pacs import convert_research_pacs, looks_like_research_pacs
from .schema import schema_problems
from .source import RulesError, line_for, parse_yaml, path_text
from .tagpattern import TagPattern, parse_tag_pattern

DEFAULT_RULES_FILE = "default_rules.yaml"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _frozen(value: Any) -> Any:
    """A rules value a frozen RuleSet can hold: mappings become sorted (key, value) pairs."""
    if isinstance(value, dict):
        return tuple(sorted((key, _frozen(item)) for key, item in value.items()))
    return value


def _parse_add_tag_target(text: str) -> int:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(f"{text!r} is not a keyword or an 8-digit hex tag (only top-level elements can be added)")
    return tag


def transcode_supported(uid: str) -> bool:
    if uid in WRITABLE_NATIVE_SYNTAXES:
        return True
    try:
        return get_encoder(uid).is_available
    except (ImportError, ValueError, NotImplementedError):
        return False


def compile_rules(data: dict[str, Any], index: dict[tuple[Any, ...], int], where: str) -> RuleSet:
    """Semantic checks the schema cannot express, then the RuleSet; raises RulesError."""
    return _Compiler(index, where).rule_set(data)


# Order inside one transformation: later kinds override earlier ones (delete wins over keep).
_RULE_KINDS = ("keep_tags", "shift_datetime", "randomize_text", "randomize_uid", "delete_tags")


class _Compiler:
    """One rules file's sections, each compiled by its own method; every problem is collected
    (with its line) before any is raised, so one run names them all."""

    def __init__(self, index: dict[tuple[Any, ...], int], where: str):
        self.index = index
        self.where = where
        self.problems: list[str] = []
        self.label_names: set[str] = {ALL_LABEL}
        self.category_names: set[str] = set()

    def rule_set(self, data: dict[str, Any]) -> RuleSet:
        profile = data.get("profile", {})
        options, shift = self.profile(profile)
        safe_private = self.patterns(profile.get("safe_private", []), ("profile", "safe_private"))
        accept = self.accept(data.get("accept", {}))
        labels = self.labels(data.get("labels", []))
        categories = self.categories(data.get("categories", []))
        forward = self.scope(data["scope_to_forward"], ("scope_to_forward",)) if "scope_to_forward" in data else Scope()
        transformations = [
            self.transformation(raw, ("transformations", i)) for i, raw in enumerate(data.get("transformations", []))
        ]
        if self.problems:
            raise RulesError(self.problems)
        return RuleSet(
            options=options,
            min_shift_days=shift["min"],
            max_shift_days=shift["max"],
            safe_private=safe_private,
            accept_sop_classes=frozenset(accept.get("sop_classes", [])),
            max_file_bytes=int(accept["max_file_mb"] * 1024 * 1024) if "max_file_mb" in accept else MAX_FILE_BYTES,
            max_decoded_bytes=(
                int(accept["max_decoded_mb"] * 1024 * 1024) if "max_decoded_mb" in accept else MAX_DECODED_BYTES
            ),
            labels=tuple(labels),
            categories=tuple(categories),
            scope_to_forward=forward,
            transformations=tuple(transformations),
            pixels=tuple(sorted((key, _frozen(value)) for key, value in data.get("pixels", {}).items())),
            source=self.where,
        )

    def problem(self, path: tuple[Any, ...], message: str) -> None:
        self.problems.append(f"{self.where}:{line_for(self.index, path)}: {path_text(path)}: {message}")

    def origin(self, path: tuple[Any, ...]) -> str:
        return f"{self.where} {path_text(path)} (line {line_for(self.index, path)})"

    def patterns(self, values: Any, path: tuple[Any, ...]) -> tuple[TagPattern, ...]:
        compiled = []
        for i, text in enumerate(_as_list(values)):
            try:
                compiled.append(parse_tag_pattern(text))
            except ValueError as exc:
                self.problem((*path, i) if not isinstance(values, str) else path, str(exc))
        return tuple(compiled)

    def profile(self, profile: dict[str, Any]) -> tuple[ProfileOptions, dict[str, int]]:
        options = ProfileOptions(**profile.get("options", {}))
        if options.retain_longitudinal_full_dates and options.retain_longitudinal_modified_dates:
            self.problem(
                ("profile", "options"),
                "retain_longitudinal_full_dates and retain_longitudinal_modified_dates "
                "exclude each other: set one of them to false",
            )
        shift = profile.get("date_shift_days", {"min": MIN_SHIFT_DAYS, "max": MAX_SHIFT_DAYS})
        if shift["min"] > shift["max"]:
            self.problem(("profile", "date_shift_days"), "min must not exceed max")
        return options, shift

    def accept(self, accept: dict[str, Any]) -> dict[str, Any]:
        for i, uid in enumerate(accept.get("sop_classes", [])):
            if not _UID.match(uid) or len(uid) > 64:
                self.problem(("accept", "sop_classes", i), f"{uid!r} is not a valid UID")
        return accept

    def labels(self, raw_labels: list[dict[str, Any]]) -> list[tuple[str, Query]]:
        labels: list[tuple[str, Query]] = []
        for i, label in enumerate(raw_labels):
            if label["name"] == ALL_LABEL:
                self.problem(("labels", i, "name"), f"{ALL_LABEL!r} is built in: every instance has it")
            try:
                labels.append((label["name"], parse_query(label["filter"])))
            except QueryError as exc:
                self.problem(("labels", i, "filter"), f"bad query: {exc}")
        self.label_names = {ALL_LABEL} | {name for name, _ in labels}
        return labels

    def categories(self, raw_categories: list[dict[str, Any]]) -> list[tuple[str, frozenset[str]]]:
        categories = []
        for i, category in enumerate(raw_categories):
            members = frozenset(_as_list(category["labels"]))
            for unknown in sorted(members - self.label_names):
                self.problem(("categories", i, "labels"), f"unknown label {unknown!r}")
            categories.append((category["name"], members))
        self.category_names = {name for name, _ in categories}
        return categories

    def scope(self, raw: dict[str, Any], path: tuple[Any, ...]) -> Scope:
        for key in ("labels", "except_labels"):
            for unknown in sorted(set(_as_list(raw.get(key))) - self.label_names):
                self.problem((*path, key), f"unknown label {unknown!r}")
        for key in ("categories", "except_categories"):
            for unknown in sorted(set(_as_list(raw.get(key))) - self.category_names):
                self.problem((*path, key), f"unknown category {unknown!r}")
        if not raw.get("labels") and not raw.get("categories"):
            self.problem(path, "a scope needs labels or categories (use labels: ALL for everything)")
        return Scope(
            labels=frozenset(_as_list(raw.get("labels"))),
            except_labels=frozenset(_as_list(raw.get("except_labels"))),
            categories=frozenset(_as_list(raw.get("categories"))),
            except_categories=frozenset(_as_list(raw.get("except_categories"))),
        )

    def transformation(self, raw: dict[str, Any], base: tuple[Any, ...]) -> Transformation:
        element_rules = [
            self.element_rule(kind, entry, (*base, kind, i))
            for kind in _RULE_KINDS
            for i, entry in enumerate(raw.get(kind, []))
        ]
        add_tags = [
            added
            for i, entry in enumerate(raw.get("add_tags", []))
            if (added := self.add_tag(entry, (*base, "add_tags", i))) is not None
        ]
        burned_in = [
            self.burned_in(entry, (*base, "remove_burned_in_annotations", i))
            for i, entry in enumerate(raw.get("remove_burned_in_annotations", []))
        ]
        transcode = raw.get("transcode")
        if transcode is not None and not transcode_supported(transcode):
            self.problem(
                (*base, "transcode"),
                f"cannot write transfer syntax {transcode!r} here: no encoder is installed "
                f"(native syntaxes always work: {', '.join(WRITABLE_NATIVE_SYNTAXES)})",
            )
        return Transformation(
            scope=self.scope(raw["scope"], (*base, "scope")),
            element_rules=tuple(element_rules),
            add_tags=tuple(add_tags),
            burned_in=tuple(burned_in),
            transcode=transcode,
            origin=f"{self.where} {path_text(base)}",
        )

    def element_rule(self, kind: str, entry: dict[str, Any], path: tuple[Any, ...]) -> ElementRule:
        rule_kind = {"keep_tags": "keep", "delete_tags": entry.get("action", "remove")}.get(kind, kind)
        if kind == "shift_datetime" and "shift_by" not in entry:
            self.problem(path, "shift_by is required")
        return ElementRule(
            kind=rule_kind,
            patterns=self.patterns(entry["tags"], (*path, "tags")),
            except_patterns=self.patterns(entry.get("except_tags", []), (*path, "except_tags")),
            origin=self.origin(path),
            shift_by=entry.get("shift_by", 0),
            reuse_mapping=entry.get("reuse_mapping"),
            split=entry.get("split"),
            ignore_case=entry.get("ignore_case", False),
        )

    def add_tag(self, entry: dict[str, Any], path: tuple[Any, ...]) -> AddTag | None:
        try:
            tag = _parse_add_tag_target(entry["tag"])
        except ValueError as exc:
            self.problem((*path, "tag"), str(exc))
            return None
        if entry["vr"] == "SQ":
            self.problem((*path, "vr"), "sequences cannot be added")
        known_vr = dictionary_VR(tag) if (tag >> 16) % 2 == 0 and in_dictionary(tag) else None
        if known_vr and entry["vr"] not in known_vr.split(" or "):
            self.problem((*path, "vr"), f"{entry['tag']} has VR {known_vr}, not {entry['vr']}")
        return AddTag(tag, entry["vr"], str(entry["value"]), entry.get("overwrite_if_exists", False), self.origin(path))

    def burned_in(self, entry: dict[str, Any], path: tuple[Any, ...]) -> BurnedInRule:
        boxes = tuple(tuple(box) for box in entry.get("boxes", []))
        if entry["type"] == "manual" and not boxes:
            self.problem(path, "type manual needs boxes: [[left, top, right, bottom], ...]")
        for k, (left, top, right, bottom) in enumerate(boxes):
            if left >= right or top >= bottom:
                self.problem((*path, "boxes", k), "a box is [left, top, right, bottom] with left < right, top < bottom")
        return BurnedInRule(entry["type"], boxes, entry.get("detector"), self.origin(path))


def load_rules_text(text: str, where: str = "<rules>") -> RuleSet:
    """Parse native or research-pacs rules; RulesError lists every problem with its line."""
    data, index = parse_yaml(text, where)
    if isinstance(data, dict) and "deidflow_rules" not in data and looks_like_research_pacs(data):
        data, index = convert_research_pacs(data, index, where)
    if not isinstance(data, dict):
        raise RulesError([f"{where}:1: a rules file is a mapping with 'deidflow_rules: 1' at the top"])
    problems = schema_problems(data, index, where)
    if problems:
        raise RulesError(problems)
    return compile_rules(data, index, where)


def load_rules(path: str | Path | None = None) -> RuleSet:
    """The rules in `path`, or the shipped default (Basic profile + modified dates)."""
    if path is None:
        text = resources.files("deidflow.data").joinpath(DEFAULT_RULES_FILE).read_text("utf-8")
        return load_rules_text(text, "default_rules.yaml")
    path = Path(path)
    return load_rules_text(path.read_text("utf-8"), str(path))
