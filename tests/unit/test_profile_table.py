"""Cross-checks for the PS3.15 Annex E Table E.1-1 data file.

The CSV at ``deidflow/data/ps3_15_table_e1_1.csv`` carries DICOM PS3.15
2025e, Table E.1-1 "Application Level Confidentiality Profile Attributes":
one row per table row, in the standard's order. The sample values below were
checked against the table in the standard's DocBook source (part15.xml,
2025e) and against an independent listing of the same table.

Duplicate tags: the 2025e table lists no tag twice, so none are allowed.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import pytest

EDITION = "2025e"
EXPECTED_ROW_COUNT = 655

CSV_PATH = Path(__file__).resolve().parents[2] / "layers" / "deidflow" / "deidflow" / "data" / "ps3_15_table_e1_1.csv"

HEADER = [
    "name",
    "tag",
    "retired",
    "in_std_comp_iod",
    "basic",
    "rtn_safe_priv",
    "rtn_uids",
    "rtn_dev_id",
    "rtn_inst_id",
    "rtn_pat_chars",
    "rtn_long_full_dates",
    "rtn_long_modif_dates",
    "clean_desc",
    "clean_struct_cont",
    "clean_graph",
]
OPTION_COLUMNS = HEADER[5:]

# Table E.1-1a: the action codes used in the Basic Profile column
BASIC_ACTIONS = {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
# the option columns only ever say "keep" or "clean", or are empty
OPTION_ACTIONS = {"", "K", "C"}

# (gggg,eeee) as the table writes it: plain hex, repeating groups such as
# (50xx,xxxx) / (60xx,3000), and the private attributes row (gggg,eeee)
TAG_RE = re.compile(r"^\((?:[0-9A-F]{4}|[0-9A-F]{2}xx|gggg),(?:[0-9A-F]{4}|xxxx|eeee)\)$")


def _read_lines() -> list[str]:
    return CSV_PATH.read_text(encoding="utf-8").splitlines()


def _read_rows() -> list[dict[str, str]]:
    data_lines = [line for line in _read_lines() if not line.startswith("#")]
    reader = csv.DictReader(data_lines)
    assert reader.fieldnames == HEADER
    return list(reader)


ROWS = _read_rows()
BY_TAG = {row["tag"]: row for row in ROWS}


def test_edition_comment() -> None:
    first, second = _read_lines()[:2]
    assert first == (
        f"# DICOM PS3.15 {EDITION}, Annex E, Table E.1-1 Application Level Confidentiality Profile Attributes"
    )
    assert second.startswith("# ")


def test_row_count() -> None:
    assert len(ROWS) == EXPECTED_ROW_COUNT


def test_first_and_last_rows() -> None:
    assert (ROWS[0]["name"], ROWS[0]["tag"]) == ("Accession Number", "(0008,0050)")
    assert (ROWS[-1]["name"], ROWS[-1]["tag"]) == ("X-Ray Source ID", "(0018,9367)")


def test_every_cell_present() -> None:
    for row in ROWS:
        assert None not in row, row  # no surplus cells
        assert all(row[col] is not None for col in HEADER), row
        assert row["name"].strip() == row["name"] != "", row


def test_basic_actions_allowed() -> None:
    bad = [(r["tag"], r["basic"]) for r in ROWS if r["basic"] not in BASIC_ACTIONS]
    assert bad == []


def test_option_actions_allowed() -> None:
    bad = [(r["tag"], col, r[col]) for r in ROWS for col in OPTION_COLUMNS if r[col] not in OPTION_ACTIONS]
    assert bad == []


def test_flags_allowed() -> None:
    assert {r["retired"] for r in ROWS} <= {"Y", "N"}
    assert {r["in_std_comp_iod"] for r in ROWS} <= {"Y", "N", "C"}


def test_tags_parse() -> None:
    bad = [r["tag"] for r in ROWS if not TAG_RE.match(r["tag"])]
    assert bad == []


def test_no_duplicate_tags() -> None:
    counts = Counter(r["tag"] for r in ROWS)
    assert [tag for tag, n in counts.items() if n > 1] == []


def test_no_duplicate_names() -> None:
    counts = Counter(r["name"] for r in ROWS)
    assert [name for name, n in counts.items() if n > 1] == []


# (name, tag, retired, in_std_comp_iod, basic, {option column: action});
# option columns not listed must be empty.
SAMPLES = [
    ("Accession Number", "(0008,0050)", "N", "Y", "Z", {}),
    ("Acquisition Comments", "(0018,4000)", "Y", "N", "X", {"clean_desc": "C"}),
    (
        "Allergies",
        "(0010,2110)",
        "N",
        "N",
        "X",
        {"rtn_pat_chars": "C", "clean_desc": "C"},
    ),
    (
        "Beam Hold Transition DateTime",
        "(300C,0127)",
        "N",
        "Y",
        "D",
        {"rtn_dev_id": "K", "rtn_long_full_dates": "K", "rtn_long_modif_dates": "C"},
    ),
    ("Content Sequence", "(0040,A730)", "N", "Y", "D", {"clean_struct_cont": "C"}),
    ("Curve Data", "(50xx,xxxx)", "Y", "N", "X", {"clean_graph": "C"}),
    ("Destination AE", "(2100,0140)", "N", "Y", "D", {"rtn_dev_id": "C"}),
    ("Device Serial Number", "(0018,1000)", "N", "Y", "X/Z/D", {"rtn_dev_id": "K"}),
    ("Device UID", "(0018,1002)", "N", "Y", "U", {"rtn_uids": "K", "rtn_dev_id": "K"}),
    ("Digital Signature UID", "(0400,0100)", "N", "Y", "U", {}),
    ("Frame of Reference UID", "(0020,0052)", "N", "Y", "U", {"rtn_uids": "K"}),
    ("Graphic Annotation Sequence", "(0070,0001)", "N", "Y", "D", {"clean_graph": "C"}),
    ("Icon Image Sequence (see Note 11)", "(0088,0200)", "N", "Y", "X", {}),
    ("Institution Name", "(0008,0080)", "N", "Y", "X/Z/D", {"rtn_inst_id": "K"}),
    ("Issuer of Admission ID", "(0038,0011)", "Y", "Y", "X", {}),
    ("Other Patient IDs", "(0010,1000)", "Y", "Y", "X", {}),
    ("Overlay Comments", "(60xx,4000)", "Y", "N", "X", {"clean_graph": "C"}),
    ("Overlay Data", "(60xx,3000)", "N", "Y", "X", {"clean_graph": "C"}),
    ("Patient's Age", "(0010,1010)", "N", "Y", "X", {"rtn_pat_chars": "K"}),
    ("Patient's Birth Date", "(0010,0030)", "N", "Y", "Z", {}),
    ("Patient's Name", "(0010,0010)", "N", "Y", "Z", {}),
    ("Patient's Sex", "(0010,0040)", "N", "Y", "Z", {"rtn_pat_chars": "K"}),
    ("Patient ID", "(0010,0020)", "N", "Y", "Z/D", {}),
    (
        "Patient State",
        "(0038,0500)",
        "N",
        "N",
        "X",
        {"rtn_pat_chars": "C", "clean_desc": "C"},
    ),
    (
        "Private Attributes where gggg is odd",
        "(gggg,eeee)",
        "N",
        "N",
        "X",
        {"rtn_safe_priv": "C"},
    ),
    ("Referenced Image Sequence", "(0008,1140)", "N", "Y", "X/Z/U*", {"rtn_uids": "K"}),
    ("Referring Physician's Name", "(0008,0090)", "N", "Y", "Z", {}),
    ("Selector AS Value", "(0072,005F)", "N", "Y", "D", {"rtn_pat_chars": "K"}),
    (
        "Series Date",
        "(0008,0021)",
        "N",
        "Y",
        "X/D",
        {"rtn_long_full_dates": "K", "rtn_long_modif_dates": "C"},
    ),
    ("SOP Instance UID", "(0008,0018)", "N", "Y", "U", {"rtn_uids": "K"}),
    ("Source of Previous Values", "(0400,0564)", "N", "Y", "Z", {"rtn_inst_id": "K"}),
    (
        "Specimen Preparation Sequence",
        "(0040,0610)",
        "N",
        "Y",
        "Z",
        {"clean_struct_cont": "C"},
    ),
    ("Station Name", "(0008,1010)", "N", "Y", "X/Z/D", {"rtn_dev_id": "K"}),
    (
        "Study Date",
        "(0008,0020)",
        "N",
        "Y",
        "Z",
        {"rtn_long_full_dates": "K", "rtn_long_modif_dates": "C"},
    ),
    ("Study Description", "(0008,1030)", "N", "Y", "X", {"clean_desc": "C"}),
    ("Study Instance UID", "(0020,000D)", "N", "Y", "U", {"rtn_uids": "K"}),
    (
        "Time of Last Detector Calibration",
        "(0018,700E)",
        "N",
        "Y",
        "X/D",
        {"rtn_dev_id": "K", "rtn_long_full_dates": "K", "rtn_long_modif_dates": "C"},
    ),
    ("UID", "(0040,A124)", "N", "Y", "U", {}),
    (
        "Waveform Annotation Sequence",
        "(0040,B020)",
        "N",
        "Y",
        "X/D",
        {"clean_struct_cont": "C"},
    ),
    ("X-Ray Source ID", "(0018,9367)", "N", "Y", "D", {"rtn_dev_id": "K"}),
]


def test_samples_are_distinct() -> None:
    assert len({s[1] for s in SAMPLES}) == len(SAMPLES) >= 25


@pytest.mark.parametrize(
    ("name", "tag", "retired", "iod", "basic", "options"),
    SAMPLES,
    ids=[s[1] for s in SAMPLES],
)
def test_sample_row(
    name: str,
    tag: str,
    retired: str,
    iod: str,
    basic: str,
    options: dict[str, str],
) -> None:
    assert tag in BY_TAG, f"{tag} {name} missing"
    row = BY_TAG[tag]
    assert row["name"] == name
    assert row["retired"] == retired
    assert row["in_std_comp_iod"] == iod
    assert row["basic"] == basic
    assert set(options) <= set(OPTION_COLUMNS)
    assert {col: row[col] for col in OPTION_COLUMNS} == {col: options.get(col, "") for col in OPTION_COLUMNS}
