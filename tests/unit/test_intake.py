"""What cannot be cleaned is rejected with a reason, and produces nothing."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from deidflow.intake import Rejected
from deidflow.testing.synthetic import make_encapsulated_pdf
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset

from ..conftest import engine_with

BASE = "deidflow_rules: 1\n"


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _reason(data: bytes, rules: str = "") -> str:
    with pytest.raises(Rejected) as err:
        engine_with(BASE + rules).process(data)
    assert "Quixfeldt" not in str(err.value) and "MRN" not in str(err.value)
    return err.value.reason


def _ct_bytes() -> bytes:
    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def test_empty_text_and_random_bytes_are_not_dicom():
    assert _reason(b"") == "empty_file"
    assert _reason(b"patient list: Zebulon Quixfeldt, MRN 123\n") == "not_dicom"
    assert _reason(bytes(range(256)) * 40) == "not_dicom"


@pytest.mark.parametrize("cut", [200, 1000, 5000, 20000, -9, -1])
def test_truncated_files_are_rejected_wherever_they_are_cut(cut):
    data = _ct_bytes()
    assert _reason(data[:cut]) == "truncated"  # the reason says what happened, wherever the cut


def test_truncated_encapsulated_pixel_data_is_rejected():
    data = Path(get_testdata_file("JPEG2000.dcm")).read_bytes()
    assert _reason(data[:-100]) == "truncated"  # not "missing UIDs": it was cut short


def test_encapsulated_pdf_is_rejected():
    assert _reason(_bytes(make_encapsulated_pdf())) == "encapsulated_document"


def test_dicomdir_is_rejected():
    assert _reason(Path(get_testdata_file("DICOMDIR")).read_bytes()) == "dicomdir"


def _private_class_instance() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = "1.2.826.0.1.3680043.10.1379.999.1"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return _bytes(ds)


def test_unknown_sop_class_is_rejected_unless_the_rules_accept_it():
    data = _private_class_instance()
    assert _reason(data) == "unknown_sop_class"
    accepted = engine_with(BASE + "accept:\n  sop_classes: ['1.2.826.0.1.3680043.10.1379.999.1']\n").process(data)
    assert accepted.data


def test_file_over_the_size_limit_is_rejected():
    assert _reason(_ct_bytes(), "accept:\n  max_file_mb: 0.01\n") == "too_large"


def test_missing_uids_are_rejected():
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = "1.2.3.4"
    assert _reason(_bytes(ds)) == "missing_uids"


def test_dataset_without_preamble_is_read():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)  # a bare data set: no preamble, no file meta, as old archives hold
    raw = buffer.getvalue()
    assert raw[128:132] != b"DICM"
    processed = engine_with(BASE).process(raw)
    out = pydicom.dcmread(io.BytesIO(processed.data))
    assert out.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    assert out.PixelData == ds.PixelData
