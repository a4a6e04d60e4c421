"""An index item as the research side reads it: UIDs, the rules' labels, the header, where the frames are.

The header stays DICOM JSON (as the index stores it) and answers the query language through a small
adapter, so deciding a scope costs no Dataset construction: the decision runs on every instance of
every study a request touches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydicom.valuerep import STR_VR

from ..index import FrameLocations


@dataclass(frozen=True)
class InstanceRecord:
    """One de-identified instance, from its index item (and sidecar, when the header is large)."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    research_key: str
    json: dict[str, Any] = field(repr=False)
    labels: frozenset[str] = frozenset()
    sort_key: str = ""
    transfer_syntax_uid: str = ""
    object_bytes: int | None = None
    frames: FrameLocations | None = None
    number_of_frames: int = 1

    @classmethod
    def from_item(cls, item: Mapping[str, Any], header_json: str | None = None) -> InstanceRecord:
        """`header_json` is the sidecar's text when the item names one instead of holding `dicom_json`."""
        text = header_json if header_json is not None else item.get("dicom_json")
        if text is None:
            raise ValueError("the index item has neither dicom_json nor its sidecar's text")
        frames = item.get("frames")
        size = item.get("object_bytes")
        return cls(
            sop_instance_uid=str(item["sop_instance_uid"]),
            study_instance_uid=str(item.get("study_instance_uid", "")),
            series_instance_uid=str(item.get("series_instance_uid", "")),
            research_key=str(item["research_key"]),
            json=json.loads(text),
            labels=frozenset(str(v) for v in item.get("rule_labels") or ()),
            sort_key=str(item.get("series_instance_sort") or item.get("instance_sort") or item["sop_instance_uid"]),
            transfer_syntax_uid=str(item.get("transfer_syntax_uid", "")),
            object_bytes=int(size) if size is not None else None,
            frames=FrameLocations.from_item(frames) if frames else None,
            number_of_frames=int(item.get("number_of_frames") or 1),
        )

    @cached_property
    def header(self) -> JsonHeader:
        return JsonHeader(self.json)

    def value(self, tag: int) -> Any:
        """The first value of a top-level attribute, or None."""
        values = (self.json.get(f"{tag:08X}") or {}).get("Value") or [None]
        return values[0]


class JsonElement:
    """An element of a DICOM JSON header shaped as the query language reads pydicom's."""

    __slots__ = ("VR", "value")

    def __init__(self, vr: str, value: Any):
        self.VR = vr
        self.value = value


class JsonHeader:
    """DICOM JSON answering `tag in header` and `header[tag]` the way a pydicom Dataset does, for
    `deidflow.rules.query`: a single value is itself, several are a list, no value is None (an empty
    sequence is []), PN is its alphabetic form, a sequence's items are headers."""

    __slots__ = ("_json",)

    def __init__(self, data: Mapping[str, Any]):
        self._json = data

    def __contains__(self, tag: object) -> bool:
        return isinstance(tag, int) and f"{tag:08X}" in self._json

    def __getitem__(self, tag: int) -> JsonElement:
        element = self._json[f"{tag:08X}"]
        vr = element.get("vr", "UN")
        values = element.get("Value")
        if vr == "SQ":
            return JsonElement(vr, [JsonHeader(item) for item in values or ()])
        if not values:
            # As pydicom holds an empty element: text VRs as "", the others as None.
            return JsonElement(vr, "" if vr in STR_VR else None)
        if vr == "PN":
            values = [v.get("Alphabetic", "") if isinstance(v, Mapping) else v for v in values]
        return JsonElement(vr, values[0] if len(values) == 1 else list(values))

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)
