"""The Type of an attribute in an instance's IOD (PS3.3 module tables), where de-identification
must choose by it.

Table E.1-1 leaves some actions to the attribute's Type: X/Z, X/D, Z/D, X/Z/D and X/Z/U* mean
"remove unless an empty value (Type 2), a dummy (Type 1) or remapped UIDs are needed to keep the
instance valid" (PS3.15 E.1.1). Removing a Type 1 or 2 attribute, or emptying a Type 1 one, makes an
instance the standard's own validator rejects, which researchers' tools then refuse. The types come
from `data/attribute_types.json`, generated from the standard's module tables by
`tools/make_attribute_types.py`; an attribute it does not list is Type 3 in that IOD.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

from pydicom.datadict import tag_for_keyword

TYPES_FILE = "attribute_types.json"
STRICTNESS = ("1", "1C", "2", "2C", "3")


@dataclass(frozen=True)
class AttributeTypes:
    source: str
    sop_classes: dict[str, str]  # SOP Class UID -> IOD
    iods: dict[str, list[str]]  # IOD -> modules
    modules: dict[str, dict[str, str]]  # module -> top-level keyword -> Type (1, 1C, 2, 2C)
    nested: dict[str, str]  # "ParentSequence>Keyword" -> strictest Type
    _top: dict[str, dict[str, str]] = field(default_factory=dict, compare=False, repr=False)

    def iod_for(self, sop_class: str) -> str | None:
        """The IOD of a SOP class, None for one the tables do not know (private, retired)."""
        return self.sop_classes.get(sop_class)

    def type_of(self, iod: str | None, parent: str, keyword: str) -> str | None:
        """The Type of `keyword` at the top level (`parent` "") or inside the sequence `parent`;
        "3" when it is optional or not part of the IOD; None when the IOD is unknown."""
        if iod is None or not keyword:
            return None
        if parent:
            return self.nested.get(f"{parent}>{keyword}", "3")
        top = self._top.get(iod)
        if top is None:
            top = self._top[iod] = self._top_level(iod)
        return top.get(keyword, "3")

    def tags(self) -> frozenset[int]:
        """Every public tag the tables give a Type anywhere: any other is Type 3 in every IOD."""
        keywords = {k for attributes in self.modules.values() for k in attributes}
        keywords |= {path.rsplit(">", 1)[-1] for path in self.nested}
        return frozenset(tag for tag in map(tag_for_keyword, keywords) if tag is not None)

    def _top_level(self, iod: str) -> dict[str, str]:
        """The strictest Type of each attribute over the IOD's modules (whichever of them this
        instance carries, a dummy or empty value keeps it valid)."""
        merged: dict[str, str] = {}
        for module in self.iods.get(iod, ()):
            for keyword, kind in self.modules.get(module, {}).items():
                if keyword not in merged or STRICTNESS.index(kind) < STRICTNESS.index(merged[keyword]):
                    merged[keyword] = kind
        return merged


@cache
def standard_types() -> AttributeTypes:
    data = json.loads(resources.files("deidflow.data").joinpath(TYPES_FILE).read_text("utf-8"))
    return AttributeTypes(data["source"], data["sop_classes"], data["iods"], data["modules"], data["nested"])
