import pytest
from deidflow.rules.query import QueryError, parse_query
from deidflow.rules.tagpattern import PathStep, parse_tag_pattern
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

REF_SEQ = PathStep(0x00081140, "ReferencedImageSequence", "SQ")
REF_UID = PathStep(0x00081155, "ReferencedSOPInstanceUID", "UI")
PRIVATE = PathStep(0x00091010, "", "LO", "ACME 1.0")


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("ReferencedSOPInstanceUID", (REF_UID,), True),
        ("ReferencedSOPInstanceUID", (REF_SEQ, REF_UID), False),
        ("*/ReferencedSOPInstanceUID", (REF_SEQ, REF_UID), True),
        ("+/ReferencedSOPInstanceUID", (REF_UID,), False),
        ("+/Referenced*", (REF_SEQ, REF_UID), True),
        ("ReferencedImageSequence.00081155", (REF_SEQ, REF_UID), True),
        ("*/{UI}", (REF_SEQ, REF_UID), True),
        ("XXX@XXXX", (PRIVATE,), True),
        ("XXX@XXXX", (REF_UID,), False),
        ("0009{ACME 1.0}1X", (PRIVATE,), True),
        ("0009{OTHER}XX", (PRIVATE,), False),
    ],
)
def test_tag_patterns(pattern, path, expected):
    assert parse_tag_pattern(pattern).matches(path) is expected


@pytest.mark.parametrize("bad", ["", "a..b", "0010001G", "{pn}", "Patient-Name"])
def test_bad_tag_patterns_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_tag_pattern(bad)


def _ds() -> Dataset:
    ds = Dataset()
    ds.Modality = "CT"
    ds.Rows = 512
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    region = Dataset()
    region.RegionSpatialFormat = 1
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    return ds


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Modality StrEquals ct", True),
        ("Modality StrEquals CT AND Rows NbGreater 500", True),
        ("Modality StrEquals MR OR Rows NbLess 100", False),
        ('(Modality StrEquals MR OR Rows NbEquals 512) AND ImageType StrEquals "*LOCAL*"', True),
        ("StudyDescription NotExists", True),
        ("00080060 StrNotEquals CT", False),
        ("SequenceOfUltrasoundRegions.RegionSpatialFormat NbEquals 1", True),
        ("00186011.00186012 Exists", True),
    ],
)
def test_queries(query, expected):
    assert parse_query(query).evaluate(_ds()) is expected


@pytest.mark.parametrize(
    "bad",
    [
        "Modality Foo CT",
        "Modality StrEquals",
        "(Modality Exists",
        "Nope Exists",
        "Rows NbGreater big",
        "Modality Exists Modality Exists",
    ],
)
def test_bad_queries_are_rejected(bad):
    with pytest.raises(QueryError):
        parse_query(bad)
