"""What the research API reads from an index item must equal what pydicom reads from the file:
frame bytes at the recorded offsets, query answers on the DICOM JSON, bulk data references."""

from __future__ import annotations

import json
import warnings
from functools import cache
from pathlib import Path

import pydicom
import pytest
from deidflow.index import dicom_json, frame_locations, index_entry
from deidflow.research.header import InstanceRecord, JsonHeader
from deidflow.research.wado import bulk_path, instance_metadata
from deidflow.rules.query import parse_query
from pydicom.encaps import generate_frames

from tests.realfiles import real_files


@cache
def _readable(path: Path) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
            ds.PixelData  # noqa: B018 - readable to the end
            ds.file_meta.TransferSyntaxUID  # noqa: B018 - as every published instance has
        except Exception:  # noqa: BLE001 - the corpus holds broken files on purpose
            return None
    return ds


def _with_pixels() -> list[Path]:
    chosen = []
    for path in real_files("pydicom", "pydicom-data", "nibabel", "deid-data", "dicom3tools"):
        if path.stat().st_size < 20 * 1024**2 and _readable(path) is not None and "PixelData" in _readable(path):
            chosen.append(path)
    return chosen


PIXEL_FILES = _with_pixels()


def test_the_corpus_has_native_and_encapsulated_files():
    syntaxes = {_readable(p).file_meta.TransferSyntaxUID.is_encapsulated for p in PIXEL_FILES}  # type: ignore[union-attr]
    assert syntaxes == {True, False} and len(PIXEL_FILES) > 40


@pytest.mark.parametrize("path", PIXEL_FILES, ids=lambda p: p.name)
def test_frame_locations_cut_exactly_the_frames_pydicom_reads(path: Path):
    ds = _readable(path)
    assert ds is not None
    locations = frame_locations(str(path))
    if locations is None:
        pytest.skip("no byte ranges for this layout: the API decodes it instead (deflated, bit-packed, no table)")
    frames_text = str(ds.get("NumberOfFrames", "1")).strip()
    if not frames_text.isdigit():
        pytest.skip("Number of Frames is not a number: intake rejects such a file before it is published")
    count = int(frames_text)
    data = path.read_bytes()
    cut = [b"".join(data[o : o + n] for o, n in locations.ranges(i, count)) for i in range(1, count + 1)]
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        expected = list(generate_frames(ds.PixelData, number_of_frames=count))
    else:
        size = len(cut[0])
        expected = [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]
    assert cut == expected
    round_trip = type(locations).from_item(locations.as_item()["frames"])
    assert round_trip == locations


QUERIES = [
    "Modality StrEquals {Modality}",
    "Modality StrEquals X*",
    "Rows NbGreater 100",
    "Rows NbEquals {Rows}",
    "PatientName StrEquals *",
    "PatientName Empty",
    "ImageType StrEquals *ORIGINAL*",
    "StudyDescription NotEmpty",
    "SliceThickness NbLess 5",
    "PixelSpacing NbGreater 0.5",
    "ReferencedImageSequence.ReferencedSOPClassUID Exists",
    "SOPClassUID StrNotEquals 1.2.840.10008.5.1.4.1.1.2",
    "BodyPartExamined NotExists OR (Modality StrEquals CT AND Rows NbGreater 256)",
]


@pytest.mark.parametrize("path", PIXEL_FILES[:60], ids=lambda p: p.name)
def test_queries_answer_the_same_on_the_index_json_as_on_the_dataset(path: Path):
    ds = _readable(path)
    assert ds is not None
    header = JsonHeader(dicom_json(ds)[0])
    for template in QUERIES:
        try:
            text = template.format(Modality=ds.get("Modality", "OT"), Rows=ds.get("Rows", 0))
        except (KeyError, ValueError):
            continue
        query = parse_query(text)
        assert query.evaluate(header) == query.evaluate(ds), text


def _record(ds: pydicom.Dataset, key: str = "studies/1/series/2/instances/3.dcm") -> InstanceRecord:
    return InstanceRecord.from_item(index_entry(ds, key).item)


def test_metadata_references_bulk_data_by_url_and_each_reference_reads_back_its_value():
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("waveform_ecg.dcm"))
    record = _record(ds)
    metadata = instance_metadata(record, "https://api.example/dicomweb")
    text = json.dumps(metadata)
    uris = [u for u in text.split('"') if "/bulkdata/" in u]
    assert uris and all(u.startswith("https://api.example/dicomweb/studies/") for u in uris)
    for uri in uris:
        path = bulk_path(record, uri.rsplit("/bulkdata/", 1)[1])
        node = ds
        for i, part in enumerate(path):
            node = node[part].value if i % 2 == 0 else node[part]
        assert isinstance(node, bytes) and len(node) > 0
    with pytest.raises(KeyError):
        bulk_path(record, "00100010")  # a tag that is not a bulk reference of this instance
    assert pydicom.Dataset.from_json(metadata, bulk_data_uri_handler=lambda *_: b"").SOPInstanceUID


def test_pixel_data_is_referenced_without_being_read():
    """The Index step reads with defer_size: a large value must stay in the file."""
    from deidflow.dicomraw.read import held

    source = next(p for p in PIXEL_FILES if p.stat().st_size > 500_000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(source, defer_size=1024)
        item = index_entry(ds, "k.dcm").item
    header = json.loads(item["dicom_json"])
    assert set(header["7FE00010"]) == {"vr", "BulkDataURI"}
    raw = held(ds)[0x7FE00010]
    assert getattr(raw, "value", b"") is None, "Pixel Data was read into memory"


class _OneFileStore:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, key: str) -> bytes:
        return self.data

    def read_ranges(self, key: str, ranges):
        return [self.data[o : o + n] for o, n in ranges]

    def presigned_url(self, key: str, seconds: int) -> str:
        return "unused"


@pytest.mark.parametrize(
    "path",
    [p for p in PIXEL_FILES if frame_locations(str(p)) is None and "SOPInstanceUID" in _readable(p)],  # type: ignore[operator]
    ids=lambda p: p.name,
)
def test_frames_without_byte_ranges_are_read_by_decoding_the_object(path: Path):
    """Deflated, bit-packed or table-less layouts: the API reads the object and cuts the frames as
    pydicom does (encapsulated ones as stored; native ones as Explicit VR Little Endian)."""
    from deidflow.research.service import ApiError, ResearchService

    ds = _readable(path)
    assert ds is not None
    record = InstanceRecord.from_item(index_entry(ds, "k.dcm", frames=None).item)
    service = ResearchService(index=None, store=_OneFileStore(path.read_bytes()), base_url="")  # type: ignore[arg-type]
    try:
        chunks, syntax = service._frame_bytes(record, [1])
    except ApiError as exc:
        assert exc.status == 501 and ds.BitsAllocated == 1
        return
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        count = int(ds.get("NumberOfFrames") or 1)
        assert chunks[0] == next(generate_frames(ds.PixelData, number_of_frames=count))
        assert syntax == ds.file_meta.TransferSyntaxUID
    else:
        assert chunks[0] == ds.PixelData[: len(chunks[0])] and syntax == "1.2.840.10008.1.2.1"
