"""Table E.1-1's combined actions are chosen by the attribute's Type in the instance's IOD."""

from __future__ import annotations

import io

import pydicom
import pytest
from deidflow.attribute_types import standard_types
from deidflow.profile import resolve_combined

from .test_hostile_input import _bytes, _ct, _process

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    ("action", "attribute_type", "chosen"),
    [
        ("X/Z/D", "3", "X"),
        ("X/Z/D", "2", "Z"),
        ("X/Z/D", "2C", "Z"),
        ("X/Z/D", "1", "D"),
        ("X/Z/D", "1C", "D"),
        ("X/Z", "3", "X"),
        ("X/Z", "2", "Z"),
        ("X/D", "1", "D"),
        ("X/D", "2", "D"),
        ("Z/D", "3", "Z"),
        ("Z/D", "1", "D"),
        ("X", "3", "X"),
        ("X", "2C", "Z"),  # removing a Type 2 attribute would break the IOD; empty carries nothing
        ("X", "1", "D"),
        ("X/Z/U*", "3", "U"),  # references survive, remapped
        ("X/Z/U*", "2", "U"),
        ("Z", "3", "Z"),
        ("K", "1", "K"),
        ("X/Z/D", None, "D"),  # an IOD the tables do not know: the rightmost, valid for any Type
        ("X/Z", None, "Z"),
    ],
)
def test_combined_actions_are_chosen_by_type(action, attribute_type, chosen):
    assert resolve_combined(action, attribute_type) == chosen


def test_types_come_from_the_module_tables():
    types = standard_types()
    iod = types.iod_for(CT)
    assert iod == "ct-image"
    assert types.type_of(iod, "", "StudyDate") == "2"
    assert types.type_of(iod, "", "ReferencedStudySequence") == "3"
    assert types.type_of(iod, "", "ResponsiblePerson") == "2C"
    assert types.type_of(iod, "OperatorIdentificationSequence", "PersonIdentificationCodeSequence") == "1"
    assert types.type_of(None, "", "StudyDate") is None
    assert types.iod_for("1.2.826.0.1.3680043.10.1379.999.2") is None


def test_a_ct_keeps_its_type_2_attributes_and_loses_its_optional_ones():
    ds, _ = _ct()
    ds.ResponsiblePerson = "Brackwater^Agatha"
    ds.ResponsiblePersonRole = "MOTHER"
    out = pydicom.dcmread(io.BytesIO(_process(_bytes(ds)).data))
    assert "ReferencedStudySequence" not in out  # X/Z, Type 3 in the CT Image IOD
    assert "ResponsiblePerson" in out and out.ResponsiblePerson == ""  # X, but Type 2C
    assert out.AccessionNumber != ds.AccessionNumber and "AccessionNumber" in out  # Type 2


def test_an_unreadable_type_2_date_is_emptied_not_removed():
    ds, _ = _ct()
    ds.StudyDate = "NOTADATE"
    out = pydicom.dcmread(io.BytesIO(_process(_bytes(ds)).data))
    assert "StudyDate" in out and out.StudyDate == ""


def test_an_unreadable_type_1_date_becomes_a_dummy():
    ds, _ = _ct()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT
    assert standard_types().type_of("enhanced-ct-image", "", "ContentDate") == "1"
    ds.ContentDate = "NOTADATE"
    out = pydicom.dcmread(io.BytesIO(_process(_bytes(ds)).data))
    assert out.ContentDate == "19000101"
