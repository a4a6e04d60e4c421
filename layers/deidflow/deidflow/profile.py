"""PS3.15 Annex E Table E.1-1 (the Basic Application Level Confidentiality Profile) as data.

The table itself lives in `data/ps3_15_table_e1_1.csv` (edition recorded in its first line). This
module loads it, resolves the action for a tag under the chosen options, and names the CID 7050 codes
that say which profile and options were applied.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources

TABLE_FILE = "ps3_15_table_e1_1.csv"

# Action codes, strongest protection first: when two selected options disagree about one attribute,
# the more protective action wins ("when in doubt, remove").
PROTECTION_ORDER = ("X", "Z", "D", "U", "C", "K")


@dataclass(frozen=True)
class ProfileOptions:
    """The Annex E options; modified dates is the one on by default."""

    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    retain_longitudinal_full_dates: bool = False
    retain_longitudinal_modified_dates: bool = True
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False

    def selected(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


# Option -> (table column, CID 7050 code, code meaning)
OPTION_COLUMNS: dict[str, tuple[str, str, str]] = {
    "retain_safe_private": ("rtn_safe_priv", "113111", "Retain Safe Private Option"),
    "retain_uids": ("rtn_uids", "113110", "Retain UIDs Option"),
    "retain_device_identity": ("rtn_dev_id", "113109", "Retain Device Identity Option"),
    "retain_institution_identity": ("rtn_inst_id", "113112", "Retain Institution Identity Option"),
    "retain_patient_characteristics": ("rtn_pat_chars", "113108", "Retain Patient Characteristics Option"),
    "retain_longitudinal_full_dates": (
        "rtn_long_full_dates",
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_longitudinal_modified_dates": (
        "rtn_long_modif_dates",
        "113107",
        "Retain Longitudinal Temporal Information Modified Dates Option",
    ),
    "clean_descriptors": ("clean_desc", "113105", "Clean Descriptors Option"),
    "clean_structured_content": ("clean_struct_cont", "113104", "Clean Structured Content Option"),
    "clean_graphics": ("clean_graph", "113103", "Clean Graphics Option"),
}
BASIC_PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA_CODE = ("113101", "Clean Pixel Data Option")


@dataclass(frozen=True)
class ProfileRow:
    name: str
    tag: str  # as the standard writes it, e.g. "(0008,0050)", "(60xx,3000)", "(gggg,eeee)"
    basic: str
    options: dict[str, str]  # column -> action, only non-empty cells
    line: int  # line in the CSV, so `explain` can cite the row

    @property
    def label(self) -> str:
        return f"PS3.15 E.1-1 {self.tag} {self.name}"


@dataclass(frozen=True)
class ProfileTable:
    edition: str
    rows: tuple[ProfileRow, ...]
    exact: dict[int, ProfileRow]
    masked: tuple[tuple[int, int, ProfileRow], ...]  # (mask, value, row) for xx wildcards
    private: ProfileRow | None

    @property
    def edition_id(self) -> str:
        """Short form for DeidentificationMethod (LO, 64 chars), e.g. "PS3.15 2025b"."""
        match = re.search(r"PS3\.15\s+(\S+?),?\s", self.edition + " ")
        return f"PS3.15 {match.group(1)}" if match else "PS3.15"

    def row_for(self, tag: int) -> ProfileRow | None:
        row = self.exact.get(tag)
        if row is not None:
            return row
        for mask, value, masked_row in self.masked:
            if tag & mask == value:
                return masked_row
        if (tag >> 16) % 2 == 1:
            return self.private
        return None


_TAG = re.compile(r"^\(([0-9A-Fa-fx]{4}),([0-9A-Fa-fx]{4})\)$")


def _mask_and_value(tag_text: str) -> tuple[int, int] | None:
    match = _TAG.match(tag_text.strip())
    if not match:
        return None
    digits = (match.group(1) + match.group(2)).upper()
    mask = int("".join("0" if c == "X" else "F" for c in digits), 16)
    value = int("".join("0" if c == "X" else c for c in digits), 16)
    return mask, value


def load_table(text: str) -> ProfileTable:
    lines = text.splitlines()
    edition = lines[0].lstrip("# ").strip() if lines and lines[0].startswith("#") else "unknown"
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line and not line.startswith("#")]
    reader = csv.DictReader(line for _, line in numbered)
    option_columns = {column for column, _, _ in OPTION_COLUMNS.values()}
    rows: list[ProfileRow] = []
    exact: dict[int, ProfileRow] = {}
    masked: list[tuple[int, int, ProfileRow]] = []
    private: ProfileRow | None = None
    for (line_no, _), record in zip(numbered[1:], reader, strict=True):
        row = ProfileRow(
            name=record["name"],
            tag=record["tag"].strip(),
            basic=record["basic"].strip(),
            options={c: record[c].strip() for c in option_columns if (record.get(c) or "").strip()},
            line=line_no,
        )
        rows.append(row)
        if row.tag.lower() == "(gggg,eeee)":
            private = row
            continue
        parsed = _mask_and_value(row.tag)
        if parsed is None:
            raise ValueError(f"{TABLE_FILE}:{line_no}: cannot read tag {row.tag!r}")
        mask, value = parsed
        if mask == 0xFFFFFFFF:
            exact.setdefault(value, row)
        else:
            masked.append((mask, value, row))
    return ProfileTable(edition, tuple(rows), exact, tuple(masked), private)


@cache
def standard_table() -> ProfileTable:
    return load_table(resources.files("deidflow.data").joinpath(TABLE_FILE).read_text("utf-8"))


def resolve_combined(action: str, attribute_type: str | None = None) -> str:
    """Pick one action from X/Z, X/D, Z/D, X/Z/D, X/Z/U* by the attribute's Type (PS3.15 E.1.1):
    remove what is optional, empty what is Type 2, replace with a dummy (or remapped UIDs) what is
    Type 1. A plain X on a Type 1 or 2 attribute (E.1-1 lists some that are Type 2C, Responsible
    Person for one) becomes a dummy or an empty value too: that carries nothing more, and keeps
    the instance valid.

    X/Z/U* always keeps the sequence with its UIDs remapped: references between instances survive
    (an SR's evidence, a segmentation's source images), and a remapped UID carries nothing.
    With no Type (an IOD the module tables do not know) the rightmost choice is taken: it is valid
    for every Type, and carries no more information than removal.
    """
    choices = [choice.rstrip("*") for choice in action.split("/")]
    if attribute_type is None or "U" in choices or (len(choices) == 1 and choices != ["X"]):
        return choices[-1]
    if attribute_type in ("1", "1C"):
        for choice in ("D", "U", "Z"):
            if choice in choices:
                return choice
        return "D"
    if attribute_type in ("2", "2C"):
        for choice in ("Z", "D", "U"):
            if choice in choices:
                return choice
        return "Z"
    return "X" if "X" in choices else choices[0]


def resolve_action(row: ProfileRow, options: ProfileOptions, attribute_type: str | None = None) -> tuple[str, str]:
    """(single action, what decided it: "basic" or the option name)."""
    chosen: tuple[str, str] | None = None
    for option in options.selected():
        column = OPTION_COLUMNS[option][0]
        cell = row.options.get(column)
        if not cell:
            continue
        action = resolve_combined(cell, attribute_type)
        if chosen is None or PROTECTION_ORDER.index(action) < PROTECTION_ORDER.index(chosen[0]):
            chosen = (action, option)
    return chosen or (resolve_combined(row.basic, attribute_type), "basic")


def method_codes(options: ProfileOptions, *, pixels_cleaned: bool = False) -> list[tuple[str, str]]:
    codes = [BASIC_PROFILE_CODE]
    if pixels_cleaned:
        codes.append(CLEAN_PIXEL_DATA_CODE)
    codes += [OPTION_COLUMNS[o][1:] for o in options.selected()]
    return codes
