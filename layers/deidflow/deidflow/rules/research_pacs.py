"""Accept a research-pacs-on-aws de-identifier config by converting it to deidflow rules.

The research-pacs keys map one to one onto ours (CamelCase -> snake_case). Its random values become
keyed pseudonyms here (same key, same output), which is what its ReuseMapping asks for anyway; with
no ReuseMapping each instance gets its own value, as in research-pacs. The PS3.15 Basic profile
still applies underneath: the config's transformations override it for the elements they name.
Anything we cannot honour is an error that names its line, never silently ignored.
"""

from __future__ import annotations

from typing import Any

from .source import RulesError, line_for

_SCOPE_KEYS = {
    "Labels": "labels",
    "ExceptLabels": "except_labels",
    "NotLabels": "except_labels",  # the research-pacs example spells it this way
    "Categories": "categories",
    "ExceptCategories": "except_categories",
    "NotCategories": "except_categories",
}
_ELEMENT_KEYS = {
    "TagPatterns": "tags",
    "ExceptTagPatterns": "except_tags",
    "NotTagPatterns": "except_tags",
    "ShiftBy": "shift_by",
    "ReuseMapping": "reuse_mapping",
    "Split": "split",
    "IgnoreCase": "ignore_case",
    "Action": "action",
}
_TRANSFORMATIONS = {
    "ShiftDateTime": "shift_datetime",
    "RandomizeText": "randomize_text",
    "RandomizeUID": "randomize_uid",
    "DeleteTags": "delete_tags",
    "AddTags": "add_tags",
    "RemoveBurnedInAnnotations": "remove_burned_in_annotations",
}
_ADD_TAG_KEYS = {"Tag": "tag", "VR": "vr", "Value": "value", "OverwriteIfExists": "overwrite_if_exists"}
_BURNED_IN_KEYS = {"Type": "type", "BoxCoordinates": "boxes"}


def looks_like_research_pacs(data: dict[str, Any]) -> bool:
    return bool({"Labels", "ScopeToForward", "Transformations"} & set(data))


class _Converter:
    def __init__(self, index: dict[tuple[Any, ...], int], where: str):
        self.old_index = index
        self.index: dict[tuple[Any, ...], int] = {(): 1}
        self.where = where
        self.problems: list[str] = []

    def line(self, old_path: tuple[Any, ...]) -> int:
        return line_for(self.old_index, old_path)

    def note(self, new_path: tuple[Any, ...], old_path: tuple[Any, ...]) -> None:
        self.index[new_path] = self.line(old_path)

    def fail(self, old_path: tuple[Any, ...], message: str) -> None:
        self.problems.append(f"{self.where}:{self.line(old_path)}: research-pacs config: {message}")

    def mapping(
        self,
        raw: Any,
        keys: dict[str, str],
        old: tuple[Any, ...],
        new: tuple[Any, ...],
        convert: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if not isinstance(raw, dict):
            self.fail(old, "expected a mapping here")
            return {}
        out: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in keys:
                self.fail((*old, key), f"cannot honour key {key!r} here (known: {', '.join(sorted(keys))})")
                continue
            target = keys[key]
            self.note((*new, target), (*old, key))
            if convert and key in convert:
                value = convert[key](value, (*old, key), (*new, target))
            elif isinstance(value, list):
                for i in range(len(value)):
                    self.note((*new, target, i), (*old, key, i))
            if target in out and isinstance(out[target], list):
                out[target] = list(out[target]) + (value if isinstance(value, list) else [value])
            else:
                out[target] = value
        return out

    def entries(
        self,
        raw: Any,
        keys: dict[str, str],
        old: tuple[Any, ...],
        new: tuple[Any, ...],
        convert: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        items = raw if isinstance(raw, list) else [raw]
        out = []
        for i, item in enumerate(items):
            self.note((*new, i), (*old, i) if isinstance(raw, list) else old)
            out.append(self.mapping(item, keys, (*old, i) if isinstance(raw, list) else old, (*new, i), convert))
        return out


def _lower(value: Any, old: tuple[Any, ...], new: tuple[Any, ...]) -> Any:
    return value.lower() if isinstance(value, str) else value


def convert_research_pacs(
    data: dict[str, Any], index: dict[tuple[Any, ...], int], where: str
) -> tuple[dict[str, Any], dict[tuple[Any, ...], int]]:
    c = _Converter(index, where)
    out: dict[str, Any] = {"deidflow_rules": 1, "description": f"converted from research-pacs config {where}"}
    for key, value in data.items():
        if key == "Labels":
            out["labels"] = c.entries(
                value,
                {"Name": "name", "DICOMQueryFilter": "filter", "DICOMFilterQuery": "filter"},
                ("Labels",),
                ("labels",),
            )
        elif key == "Categories":
            out["categories"] = c.entries(value, {"Name": "name", "Labels": "labels"}, ("Categories",), ("categories",))
        elif key == "ScopeToForward":
            out["scope_to_forward"] = c.mapping(value, _SCOPE_KEYS, ("ScopeToForward",), ("scope_to_forward",))
        elif key == "Transformations":
            out["transformations"] = _transformations(c, value)
        else:
            c.fail(
                (key,),
                f"cannot honour top-level key {key!r} (known: Labels, Categories, ScopeToForward, Transformations)",
            )
        c.note((_new_name(key),), (key,))
    if c.problems:
        raise RulesError(c.problems)
    return out, c.index


def _new_name(key: str) -> str:
    return {
        "Labels": "labels",
        "Categories": "categories",
        "ScopeToForward": "scope_to_forward",
        "Transformations": "transformations",
    }.get(key, key)


def _transformations(c: _Converter, raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        c.fail(("Transformations",), "Transformations must be a list")
        return []
    result = []
    for t_index, item in enumerate(raw):
        old = ("Transformations", t_index)
        new = ("transformations", t_index)
        c.note(new, old)
        if not isinstance(item, dict):
            c.fail(old, "each transformation is a mapping")
            continue
        converted: dict[str, Any] = {}
        for key, value in item.items():
            if key == "Scope":
                converted["scope"] = c.mapping(value, _SCOPE_KEYS, (*old, key), (*new, "scope"))
            elif key == "Transcode":
                converted["transcode"] = value
            elif key == "AddTags":
                entries = c.entries(value, _ADD_TAG_KEYS, (*old, key), (*new, "add_tags"))
                for entry in entries:
                    if isinstance(entry.get("tag"), str) and ("." in entry["tag"] or "[" in entry["tag"]):
                        c.fail(
                            (*old, key),
                            f"AddTags into a sequence ({entry['tag']!r}) is not supported: "
                            "only top-level tags can be added",
                        )
                converted["add_tags"] = entries
            elif key == "RemoveBurnedInAnnotations":
                converted["remove_burned_in_annotations"] = c.entries(
                    value,
                    _BURNED_IN_KEYS,
                    (*old, key),
                    (*new, "remove_burned_in_annotations"),
                    {"Type": _lower},
                )
            elif key in _TRANSFORMATIONS:
                target = _TRANSFORMATIONS[key]
                converted[target] = c.entries(
                    value,
                    _ELEMENT_KEYS,
                    (*old, key),
                    (*new, target),
                    {"Action": _lower} if key == "DeleteTags" else None,
                )
            else:
                c.fail(
                    (*old, key),
                    f"cannot honour transformation {key!r} (known: Scope, Transcode, "
                    + ", ".join(sorted(_TRANSFORMATIONS))
                    + ")",
                )
                continue
            c.note((*new, _TRANSFORMATIONS.get(key, key.lower())), (*old, key))
        result.append(converted)
    return result
