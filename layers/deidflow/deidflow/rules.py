"""The YAML rules language: schema, loading with line-numbered errors, and the compiled RuleSet.

A rules file says which profile options apply, which instances are accepted and forwarded, and
per-scope transformations that override the profile for the elements they name. research-pacs-on-aws
de-identifier configs are accepted too (see `research_pacs`). `docs/rules.md` is the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset

from .profile import ProfileOptions
from .query import Query, QueryError, parse_query
from .tagpattern import PathStep, TagPattern, parse_tag_pattern

DEFAULT_RULES_FILE = "default_rules.yaml"
ALL_LABEL = "ALL"
REUSE_MAPPINGS = ("SameSeries", "SameStudy", "SamePatient", "Always")
VALID_VRS = [
    "AE",
    "AS",
    "AT",
    "CS",
    "DA",
    "DS",
    "DT",
    "FD",
    "FL",
    "IS",
    "LO",
    "LT",
    "OB",
    "OD",
    "OF",
    "OL",
    "OV",
    "OW",
    "PN",
    "SH",
    "SL",
    "SQ",
    "SS",
    "ST",
    "SV",
    "TM",
    "UC",
    "UI",
    "UL",
    "UN",
    "UR",
    "US",
    "UT",
    "UV",
]
NATIVE_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
}
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")

_string_or_list = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_scope = {
    "type": "object",
    "additionalProperties": False,
    "properties": {k: _string_or_list for k in ("labels", "except_labels", "categories", "except_categories")},
}
_tags = {
    "tags": _string_or_list,
    "except_tags": _string_or_list,
}


def _element_rule(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["tags"],
            "properties": {**_tags, **(extra or {})},
        },
    }


SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["deidflow_rules"],
    "properties": {
        "deidflow_rules": {"const": 1},
        "description": {"type": "string"},
        "profile": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "options": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {name: {"type": "boolean"} for name in ProfileOptions.__dataclass_fields__},
                },
                "date_shift_days": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["min", "max"],
                    "properties": {"min": {"type": "integer", "minimum": 0}, "max": {"type": "integer", "minimum": 0}},
                },
                "safe_private": {"type": "array", "items": {"type": "string"}},
            },
        },
        "accept": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "sop_classes": {"type": "array", "items": {"type": "string"}},
                "max_file_mb": {"type": "number", "exclusiveMinimum": 0},
                "max_decoded_mb": {"type": "number", "exclusiveMinimum": 0},
            },
        },
        "pixels": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "mode": {"enum": ["auto", "always", "never"]},
                "detector": {"enum": ["local", "rapidocr", "tesseract", "rekognition", "none"]},
                "margin": {"type": "integer", "minimum": 0},
                "frame_sampling": {"enum": ["sample", "all"]},
                "sample_every": {"type": "integer", "minimum": 1},
                "trust_no_for_text_prone": {"type": "boolean"},
                "lossy_output": {"enum": ["explicit-vr-little-endian", "jpeg-2000-lossless"]},
            },
        },
        "labels": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "filter"],
                "properties": {"name": {"type": "string", "minLength": 1}, "filter": {"type": "string"}},
            },
        },
        "categories": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name", "labels"],
                "properties": {"name": {"type": "string", "minLength": 1}, "labels": _string_or_list},
            },
        },
        "scope_to_forward": _scope,
        "transformations": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scope"],
                "properties": {
                    "scope": _scope,
                    "keep_tags": _element_rule(),
                    "shift_datetime": _element_rule(
                        {"shift_by": {"type": "integer", "minimum": 1}, "reuse_mapping": {"enum": list(REUSE_MAPPINGS)}}
                    ),
                    "randomize_text": _element_rule(
                        {
                            "split": {"type": "string", "minLength": 1},
                            "ignore_case": {"type": "boolean"},
                            "reuse_mapping": {"enum": list(REUSE_MAPPINGS)},
                        }
                    ),
                    "randomize_uid": _element_rule(),
                    "delete_tags": _element_rule({"action": {"enum": ["remove", "empty"]}}),
                    "add_tags": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["tag", "vr", "value"],
                            "properties": {
                                "tag": {"type": "string"},
                                "vr": {"enum": VALID_VRS},
                                "value": {"type": ["string", "number"]},
                                "overwrite_if_exists": {"type": "boolean"},
                            },
                        },
                    },
                    "remove_burned_in_annotations": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type"],
                            "properties": {
                                "type": {"enum": ["ocr", "manual"]},
                                "boxes": {
                                    "type": "array",
                                    "items": {
                                        "type": "array",
                                        "items": {"type": "integer", "minimum": 0},
                                        "minItems": 4,
                                        "maxItems": 4,
                                    },
                                },
                                "detector": {"enum": ["local", "rekognition", "none"]},
                            },
                        },
                    },
                    "transcode": {"type": "string"},
                },
            },
        },
    },
}


class RulesError(ValueError):
    """Every problem found in a rules file, each as 'where:line: what'."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


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
    min_shift_days: int = 365
    max_shift_days: int = 3650
    safe_private: tuple[TagPattern, ...] = ()
    accept_sop_classes: frozenset[str] = frozenset()
    max_file_bytes: int = 2 * 1024**3
    max_decoded_bytes: int = 1024**3  # what a pixel scan may decode, checked before decoding
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


# --- loading -------------------------------------------------------------------------------------


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    index = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            index.update(_line_index(value_node, (*path, key_node.value)))
            index[(*path, key_node.value)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(_line_index(item, (*path, i)))
    return index


def line_for(index: dict[tuple[Any, ...], int], path: Iterable[Any]) -> int:
    path = tuple(path)
    while path not in index and path:
        path = path[:-1]
    return index.get(path, 1)


def _path_text(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_yaml(text: str, where: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise RulesError([f"{where}:1: the file is empty"])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RulesError([f"{where}:{line}: not valid YAML: {exc.problem or exc}"]) from None
    finally:
        loader.dispose()
    return data, _line_index(node)


def _schema_problems(data: Any, index: dict[tuple[Any, ...], int], where: str) -> list[str]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: line_for(index, e.absolute_path)):
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            allowed = ", ".join(sorted(error.schema.get("properties", {})))
            for key in extra:
                line = line_for(index, (*error.absolute_path, key))
                problems.append(
                    f"{where}:{line}: unknown key {key!r} in {_path_text(error.absolute_path)} (allowed: {allowed})"
                )
            continue
        message = error.message
        if error.validator in ("anyOf", "oneOf"):
            message = f"{error.instance!r} must be a string or a list of strings"
        elif error.validator == "enum":
            message = f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
        line = line_for(index, error.absolute_path)
        problems.append(f"{where}:{line}: {_path_text(error.absolute_path)}: {message}")
    return problems


def _parse_add_tag_target(text: str) -> int:
    if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
        return int(text, 16)
    tag = tag_for_keyword(text)
    if tag is None:
        raise ValueError(f"{text!r} is not a keyword or an 8-digit hex tag (only top-level elements can be added)")
    return tag


def transcode_supported(uid: str) -> bool:
    if uid in NATIVE_TRANSFER_SYNTAXES:
        return True
    try:
        from pydicom.pixels import get_encoder

        return get_encoder(uid).is_available
    except (ImportError, ValueError, NotImplementedError):
        return False


def compile_rules(data: dict[str, Any], index: dict[tuple[Any, ...], int], where: str) -> RuleSet:
    """Semantic checks the schema cannot express, then the RuleSet; raises RulesError."""
    problems: list[str] = []

    def problem(path: tuple[Any, ...], message: str) -> None:
        problems.append(f"{where}:{line_for(index, path)}: {_path_text(path)}: {message}")

    def patterns(values: Any, path: tuple[Any, ...]) -> tuple[TagPattern, ...]:
        compiled = []
        for i, text in enumerate(_as_list(values)):
            try:
                compiled.append(parse_tag_pattern(text))
            except ValueError as exc:
                problem((*path, i) if not isinstance(values, str) else path, str(exc))
        return tuple(compiled)

    profile = data.get("profile", {})
    options = ProfileOptions(**profile.get("options", {}))
    if options.retain_longitudinal_full_dates and options.retain_longitudinal_modified_dates:
        problem(
            ("profile", "options"),
            "retain_longitudinal_full_dates and retain_longitudinal_modified_dates "
            "exclude each other: set one of them to false",
        )
    shift = profile.get("date_shift_days", {"min": 365, "max": 3650})
    if shift["min"] > shift["max"]:
        problem(("profile", "date_shift_days"), "min must not exceed max")
    safe_private = patterns(profile.get("safe_private", []), ("profile", "safe_private"))

    accept = data.get("accept", {})
    for i, uid in enumerate(accept.get("sop_classes", [])):
        if not _UID.match(uid) or len(uid) > 64:
            problem(("accept", "sop_classes", i), f"{uid!r} is not a valid UID")

    labels: list[tuple[str, Query]] = []
    for i, label in enumerate(data.get("labels", [])):
        if label["name"] == ALL_LABEL:
            problem(("labels", i, "name"), f"{ALL_LABEL!r} is built in: every instance has it")
        try:
            labels.append((label["name"], parse_query(label["filter"])))
        except QueryError as exc:
            problem(("labels", i, "filter"), f"bad query: {exc}")
    label_names = {ALL_LABEL} | {name for name, _ in labels}
    categories = []
    for i, category in enumerate(data.get("categories", [])):
        members = frozenset(_as_list(category["labels"]))
        for unknown in sorted(members - label_names):
            problem(("categories", i, "labels"), f"unknown label {unknown!r}")
        categories.append((category["name"], members))
    category_names = {name for name, _ in categories}

    def scope(raw: dict[str, Any], path: tuple[Any, ...]) -> Scope:
        for key in ("labels", "except_labels"):
            for unknown in sorted(set(_as_list(raw.get(key))) - label_names):
                problem((*path, key), f"unknown label {unknown!r}")
        for key in ("categories", "except_categories"):
            for unknown in sorted(set(_as_list(raw.get(key))) - category_names):
                problem((*path, key), f"unknown category {unknown!r}")
        if not raw.get("labels") and not raw.get("categories"):
            problem(path, "a scope needs labels or categories (use labels: ALL for everything)")
        return Scope(
            labels=frozenset(_as_list(raw.get("labels"))),
            except_labels=frozenset(_as_list(raw.get("except_labels"))),
            categories=frozenset(_as_list(raw.get("categories"))),
            except_categories=frozenset(_as_list(raw.get("except_categories"))),
        )

    forward = scope(data["scope_to_forward"], ("scope_to_forward",)) if "scope_to_forward" in data else Scope()

    transformations = []
    # Order inside one transformation: later kinds override earlier ones (delete wins over keep).
    kinds = ("keep_tags", "shift_datetime", "randomize_text", "randomize_uid", "delete_tags")
    for t_index, raw in enumerate(data.get("transformations", [])):
        base = ("transformations", t_index)
        element_rules = []
        for kind in kinds:
            for r_index, entry in enumerate(raw.get(kind, [])):
                path = (*base, kind, r_index)
                rule_kind = {"keep_tags": "keep", "delete_tags": entry.get("action", "remove")}.get(kind, kind)
                if kind == "shift_datetime" and "shift_by" not in entry:
                    problem(path, "shift_by is required")
                element_rules.append(
                    ElementRule(
                        kind=rule_kind,
                        patterns=patterns(entry["tags"], (*path, "tags")),
                        except_patterns=patterns(entry.get("except_tags", []), (*path, "except_tags")),
                        origin=f"{where} {_path_text(path)} (line {line_for(index, path)})",
                        shift_by=entry.get("shift_by", 0),
                        reuse_mapping=entry.get("reuse_mapping"),
                        split=entry.get("split"),
                        ignore_case=entry.get("ignore_case", False),
                    )
                )
        add_tags = []
        for a_index, entry in enumerate(raw.get("add_tags", [])):
            path = (*base, "add_tags", a_index)
            try:
                tag = _parse_add_tag_target(entry["tag"])
            except ValueError as exc:
                problem((*path, "tag"), str(exc))
                continue
            if entry["vr"] == "SQ":
                problem((*path, "vr"), "sequences cannot be added")
            known_vr = dictionary_VR(tag) if (tag >> 16) % 2 == 0 and _in_dictionary(tag) else None
            if known_vr and entry["vr"] not in known_vr.split(" or "):
                problem((*path, "vr"), f"{entry['tag']} has VR {known_vr}, not {entry['vr']}")
            add_tags.append(
                AddTag(
                    tag,
                    entry["vr"],
                    str(entry["value"]),
                    entry.get("overwrite_if_exists", False),
                    f"{where} {_path_text(path)} (line {line_for(index, path)})",
                )
            )
        burned_in = []
        for b_index, entry in enumerate(raw.get("remove_burned_in_annotations", [])):
            path = (*base, "remove_burned_in_annotations", b_index)
            boxes = tuple(tuple(box) for box in entry.get("boxes", []))
            if entry["type"] == "manual" and not boxes:
                problem(path, "type manual needs boxes: [[left, top, right, bottom], ...]")
            for k, (left, top, right, bottom) in enumerate(boxes):
                if left >= right or top >= bottom:
                    problem((*path, "boxes", k), "a box is [left, top, right, bottom] with left < right, top < bottom")
            burned_in.append(
                BurnedInRule(
                    entry["type"],
                    boxes,
                    entry.get("detector"),  # type: ignore[arg-type]
                    f"{where} {_path_text(path)} (line {line_for(index, path)})",
                )
            )
        transcode = raw.get("transcode")
        if transcode is not None and not transcode_supported(transcode):
            problem(
                (*base, "transcode"),
                f"cannot write transfer syntax {transcode!r} here: no encoder is installed "
                f"(native syntaxes always work: {', '.join(NATIVE_TRANSFER_SYNTAXES)})",
            )
        transformations.append(
            Transformation(
                scope=scope(raw["scope"], (*base, "scope")),
                element_rules=tuple(element_rules),
                add_tags=tuple(add_tags),
                burned_in=tuple(burned_in),
                transcode=transcode,
                origin=f"{where} {_path_text(base)}",
            )
        )

    if problems:
        raise RulesError(problems)
    return RuleSet(
        options=options,
        min_shift_days=shift["min"],
        max_shift_days=shift["max"],
        safe_private=safe_private,
        accept_sop_classes=frozenset(accept.get("sop_classes", [])),
        max_file_bytes=int(accept.get("max_file_mb", 2048) * 1024 * 1024),
        max_decoded_bytes=int(accept.get("max_decoded_mb", 1024) * 1024 * 1024),
        labels=tuple(labels),
        categories=tuple(categories),
        scope_to_forward=forward,
        transformations=tuple(transformations),
        pixels=tuple(sorted(data.get("pixels", {}).items())),
        source=where,
    )


def _in_dictionary(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def load_rules_text(text: str, where: str = "<rules>") -> RuleSet:
    """Parse native or research-pacs rules; RulesError lists every problem with its line."""
    data, index = parse_yaml(text, where)
    if isinstance(data, dict) and "deidflow_rules" not in data:
        from .research_pacs import convert_research_pacs, looks_like_research_pacs

        if looks_like_research_pacs(data):
            data, index = convert_research_pacs(data, index, where)
    if not isinstance(data, dict):
        raise RulesError([f"{where}:1: a rules file is a mapping with 'deidflow_rules: 1' at the top"])
    problems = _schema_problems(data, index, where)
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
