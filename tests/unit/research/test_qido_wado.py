"""QIDO result attributes per target resource and WADO frame media types (PS3.18 10.6.3.3, 8.7.3)."""

from __future__ import annotations

import pytest
from deidflow.research.header import InstanceRecord
from deidflow.research.qido import ResultBuilder, parse_query
from deidflow.research.wado import accepted_frame_type

STUDY, SERIES, SOP = "2.25.1", "2.25.2", "2.25.3"
HEADER = {
    "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
    "00080018": {"vr": "UI", "Value": [SOP]},
    "00080020": {"vr": "DA", "Value": ["20200101"]},
    "00080060": {"vr": "CS", "Value": ["CT"]},
    "00080070": {"vr": "LO", "Value": ["ACME"]},
    "00100020": {"vr": "LO", "Value": ["P1"]},
    "00101010": {"vr": "AS", "Value": ["042Y"]},
    "0020000D": {"vr": "UI", "Value": [STUDY]},
    "0020000E": {"vr": "UI", "Value": [SERIES]},
    "00200011": {"vr": "IS", "Value": [1]},
    "00200013": {"vr": "IS", "Value": [7]},
    "00280010": {"vr": "US", "Value": [64]},
    "7FE00010": {"vr": "OW", "BulkDataURI": "7FE00010"},
}


def record(level: str, params: dict[str, list[str]] | None = None, fixed: tuple[int, ...] = ()) -> dict:
    instance = InstanceRecord(SOP, STUDY, SERIES, "studies/x.dcm", json=HEADER)
    query = parse_query(params or {}, level, fixed=fixed)
    return ResultBuilder(query, "http://x/dicomweb/y", [instance]).record()


def test_all_series_carry_the_study_attributes_but_not_its_counts() -> None:
    result = record("series")
    assert result["00100020"]["Value"] == ["P1"] and result["00080020"]["Value"] == ["20200101"]
    assert "00201206" not in result and "00201208" not in result and "00080061" not in result
    assert "00100020" not in record("series", fixed=(0x0020000D,))


def test_instances_carry_their_parents_attributes_by_target_resource() -> None:
    everywhere = record("instance")
    assert everywhere["00080060"]["Value"] == ["CT"] and everywhere["00100020"]["Value"] == ["P1"]
    assert "00201209" not in everywhere
    in_study = record("instance", fixed=(0x0020000D,))
    assert in_study["00080060"]["Value"] == ["CT"] and "00100020" not in in_study
    in_series = record("instance", fixed=(0x0020000D, 0x0020000E))
    assert "00080060" not in in_series and "00100020" not in in_series


def test_includefield_stays_at_its_level() -> None:
    series_all = record("series", {"includefield": ["all"]}, fixed=(0x0020000D,))
    assert "00080070" in series_all  # Manufacturer: General Equipment, a series-level key
    assert not {"00080018", "00080016", "00200013", "00280010", "7FE00010"} & set(series_all)
    study_all = record("study", {"includefield": ["all"]})
    assert "00101010" in study_all  # Patient's Age
    assert not {"00080018", "00080060", "00080070", "0020000E"} & set(study_all)
    # Named lower-level attributes are not returned either; the level's own and unknown ones are.
    named = record("series", {"includefield": ["SOPInstanceUID,Manufacturer"]}, fixed=(0x0020000D,))
    assert "00080018" not in named and "00080070" in named
    assert "00080018" in record("instance", {"includefield": ["all"]})


NATIVE, JPEG, RLE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.5"
OCTETS = "application/octet-stream"


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        ("", NATIVE, "application/octet-stream"),
        ("", JPEG, "image/jpeg"),
        ('multipart/related; type="*/*"', RLE, "image/dicom-rle"),
        ('multipart/related; type="application/octet-stream"', NATIVE, "application/octet-stream"),
        # octet-stream without a transfer syntax means Explicit VR Little Endian: no JPEG then
        ('multipart/related; type="application/octet-stream"', JPEG, None),
        ('multipart/related; type="application/octet-stream"; transfer-syntax=*', JPEG, "application/octet-stream"),
        (f'multipart/related; type="{OCTETS}"; transfer-syntax={JPEG}', JPEG, OCTETS),
        ('multipart/related; type="image/jpeg"', JPEG, "image/jpeg"),
        ('multipart/related; type="image/jpeg"', NATIVE, None),  # would need transcoding
        ('multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.70', JPEG, None),
        ('multipart/related; type="image/jp2", multipart/related; type="image/jpeg"', JPEG, "image/jpeg"),
        ("application/octet-stream", NATIVE, None),  # single-part frames are not offered
        ("*/*", JPEG, "image/jpeg"),
    ],
)
def test_frames_are_offered_as_stored(accept: str, stored: str, expected: str | None) -> None:
    assert accepted_frame_type(accept, stored) == expected
