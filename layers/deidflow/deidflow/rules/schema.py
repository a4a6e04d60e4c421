"""The JSON Schema of a rules file, and its findings as line-numbered problems."""

from __future__ import annotations

from typing import Any

import jsonschema

from ..pixels.detectors import DETECTOR_FACTORIES
from ..pixels.policy import FRAME_SAMPLINGS, LOSSY_OUTPUTS, SCAN_MODES
from ..pixels.text_filter import TextFilter
from ..profile import ProfileOptions
from ..tags import STANDARD_VRS
from .source import line_for, path_text

REUSE_MAPPINGS = ("SameSeries", "SameStudy", "SamePatient", "Always")
VALID_VRS = sorted(STANDARD_VRS)

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
                "mode": {"enum": list(SCAN_MODES)},
                "detector": {"enum": list(DETECTOR_FACTORIES)},
                "margin": {"type": "integer", "minimum": 0},
                "frame_sampling": {"enum": list(FRAME_SAMPLINGS)},
                "sample_every": {"type": "integer", "minimum": 1},
                "trust_no_for_text_prone": {"type": "boolean"},
                "allow_unscanned": {"type": "boolean"},
                "lossy_output": {"enum": list(LOSSY_OUTPUTS)},
                "text_filter": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        name: {"type": "boolean"} if name == "enabled" else {"type": "number", "minimum": 0}
                        for name in TextFilter.__dataclass_fields__
                    },
                },
                "max_growth": {"type": "number", "exclusiveMinimum": 0},
                "jpeg_in_dct_domain": {"type": "boolean"},
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


def schema_problems(
    data: Any, index: dict[tuple[Any, ...], int], where: str, schema: dict[str, Any] = SCHEMA
) -> list[str]:
    """`schema`'s findings on `data` (a rules file's by default), each as 'where:line: what'."""
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(data), key=lambda e: line_for(index, e.absolute_path)):
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            allowed = ", ".join(sorted(error.schema.get("properties", {})))
            for key in extra:
                line = line_for(index, (*error.absolute_path, key))
                problems.append(
                    f"{where}:{line}: unknown key {key!r} in {path_text(error.absolute_path)} (allowed: {allowed})"
                )
            continue
        message = error.message
        if error.validator in ("anyOf", "oneOf"):
            message = f"{error.instance!r} must be a string or a list of strings"
        elif error.validator == "enum":
            message = f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}"
        line = line_for(index, error.absolute_path)
        problems.append(f"{where}:{line}: {path_text(error.absolute_path)}: {message}")
    return problems
