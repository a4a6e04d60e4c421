"""Damaged and hostile files: a neighbour's identifiers never reach the output, reasons are true.

Each case builds one synthetic PHI-laden CT instance, breaks one thing the way a buggy modality or
an attacker would, and checks the result: rejected with the reason that says what happened, or
de-identified with none of the planted identifiers anywhere in the output bytes.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from deidflow.framing import read_file_meta
from deidflow.intake import Rejected
from deidflow.testing.synthetic import STAFF, SyntheticStudy, make_instance, make_patient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ..conftest import engine_with

BASE = "deidflow_rules: 1\n"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _study() -> tuple[SyntheticStudy, np.random.Generator]:
    rng = np.random.default_rng(11)
    return SyntheticStudy(make_patient(2), "1.2.826.0.1.3680043.10.1379.88.1", "ACC00088001", "20170303"), rng


def _ct() -> tuple[Dataset, list[str]]:
    study, rng = _study()
    instance = make_instance(study, "1.2.826.0.1.3680043.10.1379.88.2", 1, 1, rng, frame_of_reference="1.2.3.9")
    planted = [*study.patient.planted, study.accession, study.study_date, STAFF["institution"], STAFF["serial"]]
    planted += [part for part in STAFF["referring"].split("^") if len(part) > 2]
    return instance.dataset, planted


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _headers(data: bytes) -> dict[int, tuple[int, int, bytes]]:
    """Top-level elements of an explicit VR little endian file: tag -> (offset, header size, VR)."""
    found = {}
    ds = pydicom.dcmread(io.BytesIO(data))
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if not hasattr(raw, "value_tell"):
            continue  # a sequence of undefined length, parsed as it was read
        vr = data[raw.value_tell - 8 + 4 : raw.value_tell - 8 + 6]
        header = 12 if data[raw.value_tell - 12 + 4 : raw.value_tell - 12 + 6] in _LONG_VRS else 8
        found[int(tag)] = (raw.value_tell - header, header, vr if header == 8 else b"")
    return found


def _element_size(data: bytes, offset: int) -> int:
    vr = data[offset + 4 : offset + 6]
    if vr in _LONG_VRS:
        return 12 + struct.unpack_from("<L", data, offset + 8)[0]
    return 8 + struct.unpack_from("<H", data, offset + 6)[0]


def _swallow(data: bytes, tag: int, count: int) -> bytes:
    """Lengthen element `tag` so that its value takes in the `count` elements after it, exactly:
    the framing stays aligned, and the neighbours' values sit inside this one."""
    offset, header, _ = _headers(data)[tag]
    end = offset + _element_size(data, offset)
    for _ in range(count):
        end += _element_size(data, end)
    length = end - offset - header
    assert header == 8 and length < 0x10000
    return data[: offset + 6] + struct.pack("<H", length) + data[offset + 8 :]


def _process(data: bytes, rules: str = ""):
    return engine_with(BASE + rules).process(data)


def _rejected(data: bytes, rules: str = "") -> Rejected:
    with pytest.raises(Rejected) as caught:
        _process(data, rules)
    return caught.value


def _leaks(output: bytes, planted: list[str]) -> list[str]:
    return [value for value in planted if value.encode() in output or value.upper().encode() in output]


@pytest.mark.parametrize(
    ("keyword", "count"),
    [("Manufacturer", 1), ("Modality", 3), ("RescaleSlope", 1), ("SliceThickness", 2), ("KVP", 2)],
)
def test_a_length_that_takes_in_the_next_elements_is_rejected(keyword, count):
    ds, planted = _ct()
    data = _bytes(ds)
    tag = int(pydicom.datadict.tag_for_keyword(keyword))
    mutated = _swallow(data, tag, count)
    assert pydicom.dcmread(io.BytesIO(mutated)), "pydicom reads the damaged file without complaint"
    rejected = _rejected(mutated)
    assert rejected.reason in {"invalid_value", "malformed"}, rejected
    assert not any(value in str(rejected) for value in planted)


def test_neighbours_taken_into_a_value_that_is_replaced_go_with_it():
    ds, planted = _ct()
    mutated = _swallow(_bytes(ds), 0x00080020, 4)  # Study Date takes in the next four elements
    output = _process(mutated).data
    assert not _leaks(output, planted)
    assert pydicom.dcmread(io.BytesIO(output)).StudyDate == ""  # Type 2: emptied, not removed


@pytest.mark.parametrize("delta", [1, 2, 7, 40, 300])
def test_a_length_off_by_some_bytes_is_rejected(delta):
    ds, _ = _ct()
    data = _bytes(ds)
    offset, _, _ = _headers(data)[0x00281053]  # Rescale Slope
    (length,) = struct.unpack_from("<H", data, offset + 6)
    mutated = data[: offset + 6] + struct.pack("<H", length + delta) + data[offset + 8 :]
    assert _rejected(mutated).reason in {"invalid_value", "malformed", "truncated"}


def _retag(data: bytes, tag: int, new_tag: int) -> bytes:
    offset = _headers(data)[tag][0]
    return data[:offset] + struct.pack("<HH", new_tag >> 16, new_tag & 0xFFFF) + data[offset + 4 :]


@pytest.mark.parametrize(
    ("keyword", "new_tag"),
    [
        ("PatientName", 0x00080060),  # Modality: now out of order
        ("InstitutionName", 0x00080070),  # Manufacturer, which the data set already has
        ("PatientName", 0xFFFEE00D),  # an item delimiter: pydicom stops reading there
        ("OperatorsName", 0xFFFEE000),  # an item tag inside a data set
    ],
)
def test_a_retagged_element_is_rejected(keyword, new_tag):
    ds, _ = _ct()
    data = _bytes(ds)
    assert _rejected(_retag(data, int(pydicom.datadict.tag_for_keyword(keyword)), new_tag)).reason == "malformed"


@pytest.mark.parametrize("vr", [b"LO", b"SH", b"UT"])
def test_a_date_labelled_with_another_vr_is_still_a_date(vr):
    ds, _ = _ct()
    data = _bytes(ds)
    # Content Date (0008,0023) relabelled: the dictionary says DA, so it is shifted as one.
    offset, header, _ = _headers(data)[0x00080023]
    value = data[offset + header : offset + _element_size(data, offset)]
    if vr in _LONG_VRS:
        element = struct.pack("<HH2sxxL", 0x0008, 0x0023, vr, len(value)) + value
    else:
        element = struct.pack("<HH2sH", 0x0008, 0x0023, vr, len(value)) + value
    mutated = data[:offset] + element + data[offset + _element_size(data, offset) :]
    out = pydicom.dcmread(io.BytesIO(_process(mutated).data))
    assert out["ContentDate"].VR == "DA"
    assert out.ContentDate != ds.ContentDate
    assert out.ContentDate == out.StudyDate  # shifted by the same offset as the study date


def test_a_date_labelled_as_a_number_is_still_a_date():
    ds, _ = _ct()
    ds.add_new(0x00080023, "SS", [0, 0, 0, 0])  # placeholder of 8 bytes, replaced below
    data = _bytes(ds)
    offset, header, _ = _headers(data)[0x00080023]
    mutated = data[: offset + header] + ds.StudyDate.encode() + data[offset + header + 8 :]
    out = pydicom.dcmread(io.BytesIO(_process(mutated).data))
    assert out["ContentDate"].VR == "DA" and out.ContentDate == out.StudyDate
    assert ds.StudyDate.encode() not in _process(mutated).data


def test_a_relabelled_value_that_is_no_value_of_its_dictionary_vr_is_rejected():
    ds, _ = _ct()
    ds.add_new(0x00181030, "UN", b"\x01\x02\x03\x04")  # Protocol Name (LO) as bytes: removed anyway
    ds.add_new(0x00280030, "OB", b"\x00\x01\x02\x03")  # Pixel Spacing (DS), kept: bytes are no DS
    assert _rejected(_bytes(ds)).reason == "vr_mismatch"


def test_identity_in_code_sequences_is_removed():
    ds, _ = _ct()
    institution = Dataset()
    institution.CodeValue = "QSAI77"
    institution.CodingSchemeDesignator = "LOCALHOSP"
    institution.CodeMeaning = STAFF["institution"]
    ds.InstitutionCodeSequence = Sequence([institution])
    code = Dataset()
    code.CodeValue = "OPR4419"
    code.CodingSchemeDesignator = "STAFFDIR"
    code.CodeMeaning = "Rhea Okonkwo-Lindqvist"
    operator = Dataset()
    operator.PersonIdentificationCodeSequence = Sequence([code])
    ds.OperatorIdentificationSequence = Sequence([operator])
    performer = Dataset()
    performer.CodeValue = "HP0091"
    performer.CodingSchemeDesignator = "STAFFDIR"
    performer.CodeMeaning = "Barnaby Thistlewood"
    step = Dataset()
    step.HumanPerformerCodeSequence = Sequence([performer])
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.EvaluatorSequence = Sequence([Dataset()])
    ds.EvaluatorSequence[0].EvaluatorName = "Marchetti^Ignatius"
    values = ("QSAI77", "LOCALHOSP", "OPR4419", "STAFFDIR", "Okonkwo", "HP0091", "Thistlewood", "Marchetti")
    output = _process(_bytes(ds)).data
    for value in values:
        assert value.encode() not in output, value
    out = pydicom.dcmread(io.BytesIO(output))
    # Type 3 in the CT Image IOD, so removed: X/D and X/Z/D choose by Type (PS3.15 E.1.1).
    assert "OperatorIdentificationSequence" not in out and "InstitutionCodeSequence" not in out
    # Where the IOD is unknown the choice is the rightmost, D: the codes become dummies.
    private_class = "1.2.826.0.1.3680043.10.1379.999.2"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = private_class
    output = _process(_bytes(ds), f"accept:\n  sop_classes: ['{private_class}']\n").data
    for value in values:
        assert value.encode() not in output, value
    out = pydicom.dcmread(io.BytesIO(output))
    codes = out.OperatorIdentificationSequence[0].PersonIdentificationCodeSequence
    assert len(codes) == 1 and codes[0].CodeValue == "REMOVED" and codes[0].CodeMeaning == "REMOVED"
    assert out.InstitutionCodeSequence[0].CodingSchemeDesignator == "REMOVED"


def test_raw_data_is_opaque_and_rejected_unless_accepted():
    ds, _ = _ct()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66"
    del ds.PixelData
    assert _rejected(_bytes(ds)).reason == "opaque_content"
    accepted = _process(_bytes(ds), "accept:\n  sop_classes: ['1.2.840.10008.5.1.4.1.1.66']\n")
    assert accepted.data


def test_an_image_that_ends_cleanly_without_pixel_data_is_not_called_truncated():
    ds, _ = _ct()
    del ds.PixelData
    rejected = _rejected(_bytes(ds))
    assert rejected.reason == "no_pixel_data"


def test_a_dicomdir_with_a_broken_record_is_still_a_dicomdir():
    data = Path(get_testdata_file("DICOMDIR-nooffset")).read_bytes()
    assert _rejected(data).reason == "dicomdir"


@pytest.mark.parametrize(("rows", "columns"), [(1, 64), (64, 1), (16, 64)])
def test_geometry_that_does_not_match_the_pixel_data_is_rejected(rows, columns):
    ds, _ = _ct()
    ds.Rows, ds.Columns = rows, columns  # the full 64 x 64 Pixel Data stays
    assert _rejected(_bytes(ds)).reason == "pixel_data_mismatch"


def test_trailing_pixel_padding_shorter_than_a_frame_is_cut_off():
    ds, _ = _ct()
    declared = len(ds.PixelData)
    ds.PixelData = ds.PixelData + b"Quixfeldt2 padding "[:18]
    out = pydicom.dcmread(io.BytesIO(_process(_bytes(ds)).data))
    assert len(out.PixelData) == declared
    assert b"Quixfeldt2" not in _process(_bytes(ds)).data


def _encapsulated(frames: list[bytes], number_of_frames: int, offsets: list[int] | None = None) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    items = [struct.pack("<HHL", 0xFFFE, 0xE000, 4 * len(offsets or []))] + [
        struct.pack("<L", o) for o in offsets or []
    ]
    for fragment in frames:
        items.append(struct.pack("<HHL", 0xFFFE, 0xE000, len(fragment)) + fragment)
    ds.PixelData = b"".join(items)  # pydicom's writer adds the sequence delimiter
    ds["PixelData"].is_undefined_length = True
    ds.NumberOfFrames = number_of_frames
    return _bytes(ds)


def test_more_frames_than_fragments_is_rejected_before_anything_is_decoded():
    source = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    fragment = next(pydicom.encaps.generate_fragments(source.PixelData))
    assert _rejected(_encapsulated([fragment], 50000)).reason == "pixel_data_mismatch"


def test_an_offset_table_that_does_not_point_at_fragments_is_rejected():
    source = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    fragment = next(pydicom.encaps.generate_fragments(source.PixelData))
    data = _encapsulated([fragment, fragment], 2, offsets=[0, 16])
    assert _rejected(data).reason == "pixel_data_mismatch"


def test_encapsulated_pixel_data_under_a_native_syntax_is_rejected():
    data = Path(get_testdata_file("SC_rgb_rle.dcm")).read_bytes()
    assert _rejected(_with_syntax(data, pydicom.uid.ExplicitVRLittleEndian)).reason == "malformed"


def _with_syntax(data: bytes, syntax: str) -> bytes:
    """The same data set bytes under another declared transfer syntax (pydicom would not write it)."""
    meta = read_file_meta(data)
    file_meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    file_meta.TransferSyntaxUID = syntax
    buffer = pydicom.filebase.DicomBytesIO()
    pydicom.filewriter.write_file_meta_info(buffer, file_meta, enforce_standard=True)
    return data[:132] + buffer.getvalue() + data[meta.end :]


def test_native_pixel_data_under_an_encapsulated_syntax_is_rejected():
    ds, _ = _ct()
    data = _with_syntax(_bytes(ds), pydicom.uid.JPEGBaseline8Bit)
    assert _rejected(data).reason == "malformed"


def test_a_deflated_data_set_that_inflates_past_the_limit_is_rejected():
    ds, _ = _ct()
    ds.PixelData = bytes(20 * 1024 * 1024)
    ds.Rows, ds.Columns, ds.BitsAllocated = 2048, 5120, 16
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    data = _bytes(ds)
    assert len(data) < 200_000, "20 MiB of zeros deflate to little"
    assert _rejected(data, "accept:\n  max_file_mb: 5\n").reason == "too_large"


def test_a_deflated_stream_cut_short_is_truncated():
    ds, _ = _ct()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    data = _bytes(ds)
    assert _rejected(data[:-200]).reason in {"truncated", "malformed"}


def test_sequences_nested_without_end_are_rejected_not_recursed():
    ds, _ = _ct()
    inner = Dataset()
    item = inner
    for _ in range(200):
        child = Dataset()
        item.ReferencedImageSequence = Sequence([child])
        item = child
    ds.ReferencedImageSequence = inner.ReferencedImageSequence
    assert _rejected(_bytes(ds)).reason == "malformed"
