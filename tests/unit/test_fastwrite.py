"""fastwrite.encode_file must write exactly what pydicom.dcmwrite(enforce_file_format=True) writes.

Every case builds the same data set twice (fresh reads, or the same construction), encodes one
with each writer and compares the bytes, and the data sets afterwards (dcmwrite changes them a
little: Pixel Data is decoded and flagged, and the file meta must stay as it was).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from deidflow.dicomraw import write as fastwrite
from deidflow.dicomraw.write import encode_file
from deidflow.intake import Rejected, check_cleanable, read_dataset
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from .test_real_files import REAL_FILES


def _dcmwrite(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def _state(ds: Dataset) -> tuple[str, str, object]:
    pixel = ds.get_item(0x7FE00010) if 0x7FE00010 in ds else None
    meta = getattr(ds, "file_meta", None)
    # Object addresses (of buffered values) differ between the two copies: leave them out.
    return _ADDRESS.sub("", repr(ds)), repr(meta), getattr(pixel, "is_undefined_length", None)


def _outcome(write: Callable[[Dataset], bytes], ds: Dataset) -> tuple[object, ...]:
    try:
        data: bytes | str = write(ds)
    except Exception as exc:  # noqa: BLE001 - both writers must fail the same way
        data = type(exc).__name__
    return data, *_state(ds)


def assert_same(make: Callable[[], Dataset], *, fast_path: bool | None = None) -> None:
    fallbacks: list[int] = []
    original = fastwrite.dcmwrite_bytes

    def counting(ds: Dataset) -> bytes:
        fallbacks.append(1)
        return original(ds)

    fastwrite.dcmwrite_bytes = counting
    try:
        fast = _outcome(encode_file, make())
    finally:
        fastwrite.dcmwrite_bytes = original
    slow = _outcome(_dcmwrite, make())
    assert fast[0] == slow[0], "encoded bytes differ"
    assert fast[1:] == slow[1:], "the data set is left in a different state"
    if fast_path is not None:
        assert (not fallbacks) == fast_path


def _deidentified(path: Path, engine) -> Dataset:  # type: ignore[no-untyped-def]
    ds = read_dataset(path, engine.policy)
    check_cleanable(ds, engine.policy)
    return engine.deidentifier.deidentify(ds, plan=engine.rules.plan_for(ds)).dataset


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_files_read_as_they_are(path):
    try:
        pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001
        pytest.skip("pydicom cannot read it")
    assert_same(lambda: pydicom.dcmread(path, force=True))


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_files_deidentified(path, default_engine):
    try:
        _deidentified(path, default_engine)
    except Rejected as rejected:
        # Nothing is written for it, so no writer to compare: what is left to check is that the
        # rejection says why, as a stable code and a sentence.
        assert re.fullmatch(r"[a-z_]+", rejected.reason) and rejected.detail
        return
    assert_same(lambda: _deidentified(path, default_engine))


def test_synthetic_corpus_deidentified_takes_the_fast_path(corpus_dir, default_engine):
    corpus, _ = corpus_dir
    assert corpus.files
    for path in corpus.files.values():
        assert_same(lambda path=path: _deidentified(path, default_engine), fast_path=True)


def _built(syntax: str = ExplicitVRLittleEndian, charset: str | list[str] | None = "ISO_IR 100") -> Dataset:
    """A data set made in code: every element a DataElement, nested sequences of both kinds."""
    ds = Dataset()
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyDate = "20240101"
    ds.StudyTime = "101010.5"  # odd length: padded
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "ABC"  # odd length text
    ds.StudyDescription = "Étude crâne"  # not ASCII: pydicom encodes it
    ds.DeidentificationMethod = ["deidflow", "profile"]
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 16
    ds.SliceThickness = "1.25"
    ds.RescaleSlope = 1
    ds.add_new(0x00181050, "DS", [0.5, 0.5])  # not a string: pydicom formats it
    ds.add_new(0x00280106, "US", 0)
    ds.add_new(0x00181310, "US", [0, 2, 2, 0])  # several numbers
    ds.add_new(0x00189306, "FD", 1.5)
    ds.add_new(0x00189307, "FD", 2)
    ds.add_new(0x00080000, "UL", 0)  # a retired group length: never written
    ds.add_new(0x00091010, "LO", "private value")
    item = Dataset()
    item.CodeValue = "113100"
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = "Basic Application Confidentiality Profile"
    inner = Dataset()
    inner.ReferencedSOPInstanceUID = "1.2.3.4.6"  # odd length UID: padded with NUL
    inner.is_undefined_length_sequence_item = True
    item.ReferencedSOPSequence = Sequence([inner])
    ds.DeidentificationMethodCodeSequence = Sequence([item, Dataset()])
    ds.ReferencedStudySequence = Sequence()
    undefined = Sequence([Dataset()])
    ds.ProcedureCodeSequence = undefined
    ds["ProcedureCodeSequence"].is_undefined_length = True
    ds.PixelData = b"\x00\x01" * 4
    ds.file_meta = FileMetaDataset()
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"  # stale: follows the data set's
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.ImplementationClassUID = "1.2.3.4"
    ds.file_meta.ImplementationVersionName = "TEST_1"
    ds.file_meta.SourceApplicationEntityTitle = "AE1"
    return ds


def test_built_data_set_takes_the_fast_path():
    assert_same(_built, fast_path=True)


@pytest.mark.parametrize("charset", [None, "ISO_IR 192", ["ISO 2022 IR 6", "ISO 2022 IR 87"], "ISO_IR 144", "GB18030"])
def test_character_sets(charset):
    assert_same(lambda: _built(charset=charset))


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, "1.2.3.4.5.6"]
)
def test_other_syntaxes_are_left_to_dcmwrite(syntax):
    assert_same(lambda: _built(syntax), fast_path=False)


def test_encapsulated_pixel_data():
    def make() -> Dataset:
        ds = _built(JPEGBaseline8Bit)
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9"])
        return ds

    assert_same(make, fast_path=True)


def test_encapsulated_pixel_data_read_back():
    ds = _built(JPEGBaseline8Bit)
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xd9", b"\x00\x01"])
    data = _dcmwrite(ds)
    assert_same(lambda: pydicom.dcmread(io.BytesIO(data)), fast_path=True)


def test_read_back_with_raw_sequences_of_both_lengths():
    data = _dcmwrite(_built())
    assert_same(lambda: pydicom.dcmread(io.BytesIO(data)), fast_path=True)


@pytest.mark.parametrize(
    "change",
    [
        lambda ds: setattr(ds, "preamble", b"\x01" * 128),
        lambda ds: setattr(ds, "preamble", b"short"),
        lambda ds: delattr(ds.file_meta, "ImplementationVersionName"),
        lambda ds: delattr(ds.file_meta, "ImplementationClassUID"),
        lambda ds: setattr(ds.file_meta, "ImplementationClassUID", ""),
        lambda ds: setattr(ds.file_meta, "FileMetaInformationVersion", b""),
        lambda ds: delattr(ds.file_meta, "MediaStorageSOPClassUID"),
        lambda ds: delattr(ds.file_meta, "TransferSyntaxUID"),
        lambda ds: setattr(ds.file_meta, "FileMetaInformationGroupLength", 10),
        lambda ds: delattr(ds, "file_meta"),
        lambda ds: delattr(ds, "SOPInstanceUID"),
        lambda ds: ds.add_new(0x00020013, "SH", "X"),
        lambda ds: ds.add_new(0x00280107, "US", 70000),  # out of range: pydicom raises
        lambda ds: ds.add_new(0x00280107, "US", 1.5),
        lambda ds: ds.add_new(0x00280107, "US or SS", 1),
        lambda ds: ds.add_new(0x00181030, "LO", "x" * 70000),  # too long for a 16-bit length
        lambda ds: ds.add_new(0x00080018, "UI", "1.2.3.4.5é"),
        lambda ds: ds.add_new(0x00080050, "SH", ""),
        lambda ds: ds.add_new(0x00080050, "SH", None),
        lambda ds: ds.add_new(0x00080060, "CS", ["A", "é"]),
        lambda ds: ds.add_new(0x00080060, "CS", []),
        lambda ds: ds.add_new(0x00200013, "IS", "7"),
        lambda ds: ds.add_new(0x0040A160, "UT", "free text"),
        lambda ds: ds.add_new(0x7FE00010, "OB", b"\x01\x02\x03"),  # odd length: padded
        lambda ds: ds.add_new(0x7FE00010, "OW", io.BytesIO(b"\x01\x02")),  # buffered
    ],
)
def test_edge_cases(change):
    def make() -> Dataset:
        ds = _built()
        change(ds)
        return ds

    assert_same(make)


def test_raw_elements_of_an_odd_file():
    """Raw elements pydicom writes specially: a short VR over 64 KiB, an undefined-length UN."""

    def make() -> Dataset:
        ds = pydicom.dcmread(io.BytesIO(_dcmwrite(_built())))
        ds[0x00091010] = ds.get_item(0x00091010)._replace(value=b"y" * 70000, length=70000)
        ds[0x00091011] = ds.get_item(0x00091010)._replace(tag=Tag(0x00091011), VR="UN", length=0xFFFFFFFF, value=b"")
        return ds

    assert_same(make)
