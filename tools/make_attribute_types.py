"""Regenerate layers/deidflow/deidflow/data/attribute_types.json: the Type (1, 1C, 2, 2C) of the
attributes de-identification may remove, per IOD, from the module tables of PS3.3.

Why: Table E.1-1's combined actions (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) are chosen by the attribute's
Type in the instance's IOD (PS3.15 E.1.1), and removing or emptying a Type 1 or 2 attribute makes
an instance the standard's own validator rejects. The module tables come from highdicom's copy of
the standard (`highdicom/_standard`, MIT, generated from the DICOM standard by the
innolitics/dicom-standard project); only what the engine needs is kept:

- sop_classes: SOP Class UID -> IOD;  iods: IOD -> its modules;
- modules: module -> {keyword: Type} for the module's top-level attributes of Type 1, 1C, 2 or 2C;
- nested: "ParentSequence>Keyword" -> the strictest Type of that attribute in that sequence, in any
  module (a macro's attributes have the same Type wherever the macro is included, bar a handful).

Only attributes listed in Table E.1-1, dates and times, and the sequences deidflow removes by its
own defaults are kept. Anything absent is Type 3 (or not in the IOD).

    pip install highdicom==0.28.2 && .venv/bin/python tools/make_attribute_types.py
"""

from __future__ import annotations

import json
from importlib import metadata, resources
from pathlib import Path

from deidflow.deidentify import ISSUER_SEQUENCES
from deidflow.profile import standard_table
from pydicom.datadict import DicomDictionary, keyword_for_tag

OUT = Path(__file__).resolve().parents[1] / "layers/deidflow/deidflow/data/attribute_types.json"
STRICTNESS = ("1", "1C", "2", "2C", "3")


def _keywords() -> set[str]:
    wanted = set(ISSUER_SEQUENCES.values())
    for row in standard_table().rows:
        try:
            keyword = keyword_for_tag(int(row.tag.strip("()").replace(",", ""), 16))
        except ValueError:
            continue  # masked rows ((50xx,xxxx), (gggg,eeee)): no single keyword
        if keyword:
            wanted.add(keyword)
    wanted |= {entry[4] for entry in DicomDictionary.values() if entry[0] in ("DA", "DT", "TM")}
    return wanted


def _stricter(a: str | None, b: str) -> str:
    return b if a is None or STRICTNESS.index(b) < STRICTNESS.index(a) else a


def main() -> None:
    standard = resources.files("highdicom") / "_standard"
    modules_in = json.loads((standard / "module_attribute_map.json").read_text())
    iods_in = json.loads((standard / "iod_module_map.json").read_text())
    sop_classes = json.loads((standard / "sop_class_iod_map.json").read_text())
    wanted = _keywords()
    modules: dict[str, dict[str, str]] = {}
    nested: dict[str, str] = {}
    for module, attributes in modules_in.items():
        for attribute in attributes:
            keyword, kind, path = attribute["keyword"], attribute["type"], attribute["path"]
            if keyword not in wanted or kind not in STRICTNESS[:4]:  # "3", or "None" in a few rows
                continue
            if path:
                key = f"{path[-1]}>{keyword}"
                nested[key] = _stricter(nested.get(key), kind)
            else:
                modules.setdefault(module, {})[keyword] = kind
    iods = {iod: sorted(m["key"] for m in entries if m["key"] in modules) for iod, entries in iods_in.items()}
    data = {
        "source": f"highdicom {metadata.version('highdicom')} _standard (innolitics/dicom-standard, MIT)",
        "sop_classes": dict(sorted(sop_classes.items())),
        "iods": dict(sorted(iods.items())),
        "modules": {m: dict(sorted(v.items())) for m, v in sorted(modules.items())},
        "nested": dict(sorted(nested.items())),
    }
    OUT.write_text(json.dumps(data, indent=0, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {len(modules)} modules, {len(nested)} nested")


if __name__ == "__main__":
    main()
