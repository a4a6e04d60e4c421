"""The de-identified header as a DynamoDB index item: keys, GSI attributes, DICOM JSON, sidecar spill."""

from __future__ import annotations

import io
import json
import logging
import math
import warnings
from decimal import Decimal
from typing import Any

import numpy as np
import pydicom
import pytest
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from deidflow.engine import Engine
from deidflow.index import (
    DEFAULT_MAX_ITEM_BYTES,
    IndexEntry,
    default_sidecar_key,
    dicom_json,
    index_entry,
    item_size,
    query_attributes,
)
from deidflow.testing.synthetic import (
    SyntheticInstance,
    _content_item,
    make_patient,
    make_series,
    make_sr,
    make_study,
)
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

DYNAMODB_ITEM_LIMIT = 400 * 1024
KEY_ATTRIBUTES = ("sop_instance_uid", "study_instance_uid", "series_instance_uid", "patient_id", "research_key")


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _deidentify(engine: Engine, source: Dataset | str) -> tuple[Dataset, str]:
    """What the Index step sees: the engine's output bytes, read back, and its research key."""
    processed = engine.process(_bytes(source) if isinstance(source, Dataset) else source)
    return pydicom.dcmread(io.BytesIO(processed.data)), processed.key


def _ct_series(images: int = 3, seed: int = 11) -> list[SyntheticInstance]:
    rng = np.random.default_rng(seed)
    study = make_study(make_patient(seed), 0, rng)
    return list(make_series(study, rng, images))


def _raw(ds: Dataset, tag: int, vr: str, text: str) -> None:
    """Set a value as read from a file, undecoded: invalid values cannot be built any other way."""
    value = text.encode("ascii")
    ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, False, True, True, False)


def _walk(value: Any):
    yield value
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)


def _dynamodb_size(serialized: dict[str, Any]) -> int:
    """The item size by DynamoDB's documented rules, from TypeSerializer's output (the reference)."""

    def value(v: dict[str, Any]) -> int:
        ((kind, inner),) = v.items()
        if kind == "S":
            return len(inner.encode("utf-8"))
        if kind == "N":
            digits = len(inner.lstrip("-").replace(".", "").strip("0")) or 1
            return (digits + 1) // 2 + 1
        if kind == "B":
            return len(inner)
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "L":
            return 3 + sum(1 + value(x) for x in inner)
        if kind == "M":
            return 3 + sum(1 + len(k.encode()) + value(x) for k, x in inner.items())
        if kind in ("SS", "NS", "BS"):
            return sum(value({kind[0]: x}) for x in inner)
        raise AssertionError(kind)

    return sum(len(name.encode()) + value(v) for name, v in serialized.items())


def _serialize(item: dict[str, Any]) -> dict[str, Any]:
    serializer = TypeSerializer()  # raises TypeError on float, as put_item would
    return {name: serializer.serialize(v) for name, v in item.items()}


def _assert_putable(entry: IndexEntry) -> dict[str, Any]:
    """Everything the handler's put_item needs to hold, short of calling DynamoDB."""
    item = entry.item
    assert not any(isinstance(v, float) for v in _walk(item)), "floats are rejected by boto3"
    assert "" not in list(_walk(item)), "empty strings cannot be key attributes"
    serialized = _serialize(item)
    deserializer = TypeDeserializer()
    back = {name: deserializer.deserialize(v) for name, v in serialized.items()}
    assert back == {k: (Decimal(v) if isinstance(v, int) else v) for k, v in item.items()}
    assert _dynamodb_size(serialized) <= item_size(item), "the estimate must never be below DynamoDB's count"
    assert item_size(item) <= DEFAULT_MAX_ITEM_BYTES
    # Even the request's JSON wire form (quotes escaped) stays under the hard limit.
    assert len(json.dumps(serialized).encode()) < DYNAMODB_ITEM_LIMIT
    return serialized


# --- key and query attributes ------------------------------------------------------------------


def test_key_and_query_attributes_are_the_deidentified_values(default_engine):
    original = _ct_series(images=3)[1]
    ds, key = _deidentify(default_engine, original.dataset)
    entry = index_entry(ds, key)
    item = entry.item

    assert item["sop_instance_uid"] == ds.SOPInstanceUID != original.dataset.SOPInstanceUID
    assert item["study_instance_uid"] == ds.StudyInstanceUID != original.dataset.StudyInstanceUID
    assert item["series_instance_uid"] == ds.SeriesInstanceUID != original.dataset.SeriesInstanceUID
    assert item["patient_id"] == ds.PatientID != original.patient.patient_id
    assert item["sop_class_uid"] == ds.SOPClassUID == original.dataset.SOPClassUID
    assert item["transfer_syntax_uid"] == ds.file_meta.TransferSyntaxUID
    assert item["research_key"] == key
    assert item["modality"] == "CT"
    assert item["study_date"] == ds.StudyDate != original.study_date  # shifted, still YYYYMMDD
    assert len(item["study_date"]) == 8 and item["study_date"].isdigit()
    assert (item["series_number"], item["instance_number"]) == (1, 2)
    assert (item["rows"], item["columns"]) == (64, 64)
    assert "number_of_frames" not in item  # single-frame CT without the element: absent, not invented
    assert item["manufacturer"] == ds.Manufacturer
    assert item["manufacturer_model_name"] == ds.ManufacturerModelName
    assert item["body_part_examined"] == "CHEST"
    assert item["instance_sort"] == f"0000000002#{ds.SOPInstanceUID}"
    assert item["series_instance_sort"] == f"{ds.SeriesInstanceUID}#0000000002#{ds.SOPInstanceUID}"
    assert entry.sidecar is None and "dicom_json_sidecar" not in item
    assert "processed_at" not in item
    _assert_putable(entry)


def test_instance_sort_orders_numerically_and_unnumbered_last():
    def sort_key(number: str | None, sop: str) -> str:
        ds = Dataset()
        ds.SOPInstanceUID = sop
        ds.SeriesInstanceUID = "2.25.1"
        if number is not None:
            _raw(ds, 0x00200013, "IS", number)
        return query_attributes(ds)["instance_sort"]

    keys = [sort_key(n, f"2.25.{i}") for i, n in enumerate(["100", "2", None, "10", "2147483647", "-3", "abc"])]
    by_string = sorted(keys)
    assert [k.split("#")[0] for k in by_string] == [
        "0000000002",
        "0000000010",
        "0000000100",
        "2147483647",
        "unnumbered",
        "unnumbered",
        "unnumbered",
    ]
    assert len(set(keys)) == len(keys), "the SOP UID makes every sort key unique"


def test_missing_modality_and_study_date_are_absent_not_empty(default_engine):
    original = _ct_series(images=1, seed=5)[0].dataset
    del original.Modality
    del original.StudyDate
    ds, key = _deidentify(default_engine, original)
    assert "Modality" not in ds and "StudyDate" not in ds
    item = index_entry(ds, key).item
    assert "modality" not in item and "study_date" not in item
    # Present-but-empty is the same: an empty string would make put_item fail on a GSI key.
    ds.Modality = ""
    ds.StudyDate = ""
    ds.PatientID = ""
    item = index_entry(ds, key).item
    assert not {"modality", "study_date", "patient_id"} & item.keys()
    assert "" not in item.values()
    assert item["sop_instance_uid"] == ds.SOPInstanceUID


def test_unusable_values_are_absent_and_never_guessed():
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.7"
    ds.StudyInstanceUID = "2.25.8"
    ds.SeriesInstanceUID = "2.25.9"
    ds.StudyDate = "20230231"  # no such day
    _raw(ds, 0x00200011, "IS", "1.5")  # SeriesNumber
    _raw(ds, 0x00200013, "IS", "-3")  # InstanceNumber: valid IS, but not a sort position
    _raw(ds, 0x00280008, "IS", "0")  # NumberOfFrames must be at least 1
    item = query_attributes(ds)
    assert "study_date" not in item and "series_number" not in item and "number_of_frames" not in item
    assert item["instance_number"] == -3
    assert item["instance_sort"] == "unnumbered#2.25.7"

    ds.StudyDate = "2001.03.03"  # retired ACR-NEMA form, still a date
    assert query_attributes(ds)["study_date"] == "20010303"

    # A malformed value too long for a DynamoDB key is left out rather than failing put_item.
    ds.PatientID = "P" * 1025
    ds.Modality = "CT"
    item = query_attributes(ds)
    assert "patient_id" not in item and item["modality"] == "CT"


def test_a_dataset_without_a_sop_instance_uid_cannot_be_indexed():
    ds = Dataset()
    ds.StudyInstanceUID = "2.25.8"
    with pytest.raises(ValueError, match=r"SOP Instance UID"):
        index_entry(ds, "studies/x/series/y/instances/z.dcm")


# --- the DICOM JSON ----------------------------------------------------------------------------


def test_dicom_json_is_the_whole_header_without_pixel_data(default_engine):
    ds, key = _deidentify(default_engine, _ct_series(images=1, seed=3)[0].dataset)
    item = index_entry(ds, key).item
    header = json.loads(item["dicom_json"])

    # PS3.18 F.2.6: the pixels are a reference at their place, not a value.
    assert header["7FE00010"] == {"vr": ds["PixelData"].VR, "BulkDataURI": "7FE00010"}
    assert item["bulk_data_tags"] == ["7FE00010"]
    assert "invalid_tags" not in item
    assert set(header) == {f"{t:08X}" for t in ds.keys()}
    assert not any(k.startswith("0002") for k in header), "file meta is not part of the data set's JSON"
    # It is standard DICOM JSON: pydicom reads it back to the same values.
    back = Dataset.from_json(item["dicom_json"], bulk_data_uri_handler=lambda *_: b"")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "PatientID", "StudyDate", "ImagePositionPatient", "Rows"):
        assert back[keyword].value == ds[keyword].value, keyword
    assert len(back.DeidentificationMethodCodeSequence) == len(ds.DeidentificationMethodCodeSequence) > 0
    assert back.PatientIdentityRemoved == "YES"
    # Decimal strings are JSON numbers inside the string, so no float ever reaches the item itself.
    assert header["00200032"]["Value"] == [float(v) for v in ds.ImagePositionPatient]


def test_binary_elements_inline_when_small_and_bulk_when_large():
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03\x04")
    ds.add_new(0x00091011, "OB", bytes(5000))
    item_seq = Dataset()
    item_seq.add_new(0x54001010, "OW", b"\x00\x01")  # Waveform Data: bulk however small
    item_seq.WaveformBitsAllocated = 16
    ds.WaveformSequence = Sequence([item_seq])
    header, bulk, invalid = dicom_json(ds)
    assert header["00091010"] == {"vr": "OB", "InlineBinary": "AQIDBA=="}
    assert header["00091011"] == {"vr": "OB", "BulkDataURI": "00091011"}
    # A nested bulk value's reference is its path through the sequence items.
    assert header["54000100"]["Value"][0]["54001010"] == {"vr": "OW", "BulkDataURI": "54000100.0.54001010"}
    assert bulk == {"00091011", "54001010"} and not invalid
    assert dicom_json(ds, inline_binary_bytes=10_000)[1] == {"54001010"}


def test_non_finite_floats_and_undecodable_values_keep_the_json_valid():
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    ds.add_new(0x00189089, "FD", [math.nan, math.inf, -math.inf, 1.5])  # Diffusion Gradient Orientation
    _raw(ds, 0x00181050, "DS", "not-a-number")  # Spatial Resolution, unreadable
    entry = index_entry(ds, "k.dcm")
    header = json.loads(entry.item["dicom_json"])
    assert header["00189089"]["Value"] == ["NaN", "inf", "-inf", 1.5]
    assert "00181050" not in header
    assert entry.item["invalid_tags"] == ["00181050"]
    # Python's json accepts bare NaN/Infinity, other parsers do not: make sure none is there.
    json.loads(entry.item["dicom_json"], parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))


def test_values_never_reach_logs_or_warnings(caplog):
    # Dataset.to_json_dict(suppress_invalid_tags=True) would fail this: it logs the exception text,
    # which quotes the value. That is why index.py encodes element by element.
    secret = "Zebulon-should-not-appear"
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    _raw(ds, 0x00181050, "DS", secret)
    _raw(ds, 0x00200013, "IS", secret)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        entry = index_entry(ds, "k.dcm")
    assert entry.item["invalid_tags"] == ["00181050", "00200013"]
    assert not any(secret in str(w.message) for w in caught)
    assert secret not in caplog.text


# --- size and the sidecar ----------------------------------------------------------------------


def _huge_sr(default_engine: Engine) -> tuple[Dataset, str]:
    """A Basic Text SR with thousands of findings: its DICOM JSON is far beyond one item."""
    rng = np.random.default_rng(21)
    study = make_study(make_patient(21), 0, rng)
    images = list(make_series(study, rng, 2))
    sr = make_sr(study, rng, images).dataset
    sr.ContentSequence.extend(_content_item("TEXT", "FINDING", TextValue=f"finding {n}") for n in range(3000))
    return _deidentify(default_engine, sr)


def test_a_huge_header_spills_to_a_sidecar_and_the_item_keeps_its_keys(default_engine):
    ds, key = _huge_sr(default_engine)
    entry = index_entry(ds, key)
    item = entry.item

    assert "dicom_json" not in item
    assert item["dicom_json_sidecar"] == entry.sidecar_key == "headers/" + key.removesuffix(".dcm") + ".json"
    assert entry.sidecar is not None and len(entry.sidecar) > DYNAMODB_ITEM_LIMIT
    for name in KEY_ATTRIBUTES:
        assert item[name], name
    assert item["sop_instance_uid"] == ds.SOPInstanceUID
    assert (item["modality"], item["series_number"]) == ("SR", 99)
    header = json.loads(entry.sidecar)
    assert len(header["0040A730"]["Value"]) == len(ds.ContentSequence) > 3000
    assert Dataset.from_json(header).SOPInstanceUID == ds.SOPInstanceUID
    _assert_putable(entry)


def test_the_sidecar_holds_exactly_what_the_item_would_have(default_engine):
    ds, key = _deidentify(default_engine, _ct_series(images=1, seed=8)[0].dataset)
    inline = index_entry(ds, key)
    spilled = index_entry(ds, key, max_item_bytes=2_000, sidecar_key="sidecars/one.json")
    assert spilled.sidecar == inline.item["dicom_json"].encode("utf-8")
    assert spilled.item["dicom_json_sidecar"] == "sidecars/one.json"
    assert {k: v for k, v in spilled.item.items() if k != "dicom_json_sidecar"} == {
        k: v for k, v in inline.item.items() if k != "dicom_json"
    }
    assert item_size(inline.item) > 2_000 >= item_size(spilled.item)


def test_an_item_too_large_even_without_its_json_is_refused():
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    with pytest.raises(ValueError, match="without its DICOM JSON"):
        index_entry(ds, "k.dcm", max_item_bytes=10)


def test_default_sidecar_key_is_named_after_the_instance_outside_the_published_studies():
    key = "studies/2.25.1/series/2.25.2/instances/2.25.3.dcm"
    assert default_sidecar_key(key) == "headers/studies/2.25.1/series/2.25.2/instances/2.25.3.json"
    assert default_sidecar_key("other/object") == "headers/other/object.json"


# --- determinism -------------------------------------------------------------------------------


def test_the_same_instance_always_gives_the_same_item(default_engine):
    original = _ct_series(images=1, seed=13)[0].dataset
    data = _bytes(original)
    first_ds, first_key = _deidentify(default_engine, pydicom.dcmread(io.BytesIO(data)))
    again_ds, again_key = _deidentify(default_engine, pydicom.dcmread(io.BytesIO(data)))  # a retried step
    first = index_entry(first_ds, first_key)
    assert index_entry(first_ds, first_key) == first
    assert index_entry(again_ds, again_key) == first
    spilled = [index_entry(d, k, max_item_bytes=2_000) for d, k in ((first_ds, first_key), (again_ds, again_key))]
    assert spilled[0] == spilled[1] and spilled[0].sidecar


# --- multiframe and files nobody here wrote ----------------------------------------------------


def test_multiframe_number_of_frames(default_engine):
    original = _ct_series(images=1, seed=17)[0].dataset
    original.NumberOfFrames = 4
    original.PixelData = np.zeros((4, 64, 64), dtype=np.uint16).tobytes()
    ds, key = _deidentify(default_engine, original)
    item = index_entry(ds, key).item
    assert item["number_of_frames"] == 4 and isinstance(item["number_of_frames"], int)
    assert json.loads(item["dicom_json"])["00280008"]["Value"] == [4]


@pytest.mark.parametrize(
    ("name", "modality", "frames", "bulk"),
    [
        ("CT_small.dcm", "CT", None, ["7FE00010"]),
        ("MR_small.dcm", "MR", None, ["7FE00010"]),
        ("rtdose.dcm", "RTDOSE", 15, ["7FE00010"]),
        ("waveform_ecg.dcm", "ECG", None, ["54001010"]),
    ],
)
def test_real_files_are_indexed(default_engine, name, modality, frames, bulk):
    path = get_testdata_file(name)
    assert path, f"{name} is bundled with pydicom"
    ds, key = _deidentify(default_engine, path)
    entry = index_entry(ds, key)
    item = entry.item
    assert item["sop_instance_uid"] == ds.SOPInstanceUID
    assert item["study_instance_uid"] == ds.StudyInstanceUID
    assert item["modality"] == modality
    assert item.get("number_of_frames") == frames
    assert item["bulk_data_tags"] == bulk
    header = json.loads(item["dicom_json"])
    assert all(set(header[tag]) == {"vr", "BulkDataURI"} for tag in bulk if tag in header)
    assert item["dicom_json"].count('"BulkDataURI"') >= len(bulk), "every bulk value has its reference"
    assert Dataset.from_json(header, bulk_data_uri_handler=lambda *_: b"").SOPInstanceUID == ds.SOPInstanceUID
    _assert_putable(entry)


def test_a_dataset_without_file_meta_still_indexes():
    ds = Dataset()
    ds.SOPInstanceUID = "2.25.1"
    ds.file_meta = FileMetaDataset()
    assert "transfer_syntax_uid" not in index_entry(ds, "k.dcm").item
