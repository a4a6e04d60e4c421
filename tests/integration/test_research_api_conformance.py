"""The research API against a real DICOMweb server: the same research files in both, the same questions.

A research folder is made by the local workflow from the sample drop and a few of pydicom's test
files with other transfer syntaxes (JPEG baseline, JPEG 2000 lossless, RLE with two frames, a
15-frame Implicit VR RT Dose); the SAME de-identified files are then stored in a real Orthanc
(DICOMweb plugin). dicomweb-client asks both, as a user who sees everything, and
DICOMfileClient over the folder is a second oracle for the UID sets.

Where the two differ on purpose, the difference is named here (and in docs/research-api.md,
"Conformance statement"), so any other difference fails.

Needs Debian's orthanc, orthanc-dicomweb and orthanc-python (skipped, with the apt command, otherwise).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames

from ..conftest import TEST_KEY

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
# pydicom's test files with a syntax the samples lack (one SOP Instance UID each; the RLE copy of
# MR_small shares MR_small_jp2klossless's, so the two-frame RGB RLE stands for RLE).
EXTRA_FILES = (
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline (Process 1), YBR_FULL_422
    "MR_small_jp2klossless.dcm",  # JPEG 2000 Lossless
    "SC_rgb_rle_2frame.dcm",  # RLE Lossless, 2 frames
    "rtdose.dcm",  # Implicit VR Little Endian, 15 frames of 32-bit
    "CT_small.dcm",
)
EVERYTHING_PROFILES = """\
version: 1
profiles:
  everything:
    description: every instance, for the conformance test
    scope: {labels: [ALL]}
    level: study
    actions: [search, view, download]
assignments:
  - users: [dora]
    profiles: [everything]
"""
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"
KEY_OF = {"study": STUDY, "series": SERIES, "instance": SOP}
OCTETS_ANY = (("application/octet-stream", "*"),)  # what Orthanc 1.10 parses (one Accept option)

# -- deliberate differences (docs/research-api.md, "Conformance statement") -------------------------
# Orthanc writes every answer in its own DefaultEncoding and says so; deidflow returns the header's.
CHARSET = "00080005"
# Instance Availability is required in study and instance results (PS3.18 Table 10.6.3-3/5);
# Orthanc 1.10's plugin leaves it out.
AVAILABILITY = "00080056"
# Orthanc returns the study's attributes in /studies/{study}/instances results too (not required).
STUDY_KEYS = {
    "00080020",
    "00080030",
    "00080050",
    "00080090",
    "00100010",
    "00100020",
    "00100030",
    "00100040",
    "00200010",
}


def _pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if not found:
        pytest.skip(f"pydicom's test file {name} is not installed")
    return Path(str(found))


@dataclass
class Servers:
    research: Path
    files: dict[str, Path]  # SOP Instance UID -> the research file
    deid: Any
    orthanc: Any
    folder: Any
    deid_session: requests.Session
    orthanc_session: requests.Session
    deid_url: str
    orthanc_url: str

    def studies(self) -> list[str]:
        return first(self, "study")

    def patient(self, n: int) -> str:
        return first(self, "patient")[n]

    def count(self, level: str) -> int:
        keyword = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}[level]
        return len({str(pydicom.dcmread(p, stop_before_pixels=True)[keyword].value) for p in self.files.values()})


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    from deidflow.local.orthanc import LocalOrthanc, OrthancNotInstalled, _auth_header, find_orthanc, stow_rs

    try:
        installation = find_orthanc()
    except OrthancNotInstalled as exc:
        pytest.skip(f"no local Orthanc: {exc}")
    from deidflow.local.api import LocalResearchApi
    from deidflow.local.workflow import run_local
    from dicomweb_client import DICOMfileClient
    from dicomweb_client.api import DICOMwebClient

    base = tmp_path_factory.mktemp("conformance")
    extra = base / "extra"
    extra.mkdir()
    for name in EXTRA_FILES:
        shutil.copy(_pydicom_file(name), extra / name)
    research = base / "research"
    run = run_local([REPO / "samples" / "drop", extra], research, TEST_KEY, project=REPO, text_detector="local")
    assert run.failed_executions == 0
    assert [o.key for o in run.objects if o.status != "published"] == []
    files = {}
    for path in sorted((research / "studies").rglob("*.dcm")):
        files[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    assert len(files) == 9 + len(EXTRA_FILES)

    (base / "profiles.yaml").write_text(EVERYTHING_PROFILES, "utf-8")
    (base / "access.yaml").write_text("profiles: profiles.yaml\nusers:\n  - {username: dora}\n", "utf-8")
    with (
        LocalResearchApi(research, base / "access.yaml", project=REPO) as api,
        # A reference Orthanc to compare against: read back by its reader user (its sender may not).
        LocalOrthanc(
            base / "orthanc", base / "drop", installation=installation, delete_after_forward=False, reader=True
        ) as orthanc,
    ):
        assert stow_rs(orthanc.url, orthanc.credentials, files.values()) == len(files)
        deid_session = requests.Session()
        deid_session.headers["Authorization"] = f"Bearer {api.token('dora')}"
        orthanc_session = requests.Session()
        orthanc_session.headers["Authorization"] = _auth_header(orthanc.reader_credentials)
        yield Servers(
            research=research,
            files=files,
            deid=DICOMwebClient(api.dicomweb_url, session=deid_session),
            orthanc=DICOMwebClient(orthanc.dicomweb_url, session=orthanc_session),
            folder=DICOMfileClient(f"file://{research / 'studies'}", in_memory=True, update_db=True),
            deid_session=deid_session,
            orthanc_session=orthanc_session,
            deid_url=api.dicomweb_url,
            orthanc_url=orthanc.dicomweb_url,
        )


def uids(results: list[dict[str, Any]], level: str) -> set[str]:
    return {r[KEY_OF[level]]["Value"][0] for r in results}


def by_uid(results: list[dict[str, Any]], level: str) -> dict[str, dict[str, Any]]:
    return {r[KEY_OF[level]]["Value"][0]: r for r in results}


def first(servers: Servers, what: str) -> list[str]:
    """Stable picks from the data: every study, patient ID ... in UID order."""
    studies = sorted(servers.deid.search_for_studies(), key=lambda r: r[STUDY]["Value"][0])
    if what == "study":
        return [r[STUDY]["Value"][0] for r in studies]
    return [r["00100020"]["Value"][0] for r in studies]


# -- QIDO-RS: the same results -------------------------------------------------------------------------

QUERIES: list[tuple[str, str, Callable[[Servers], dict[str, Any]]]] = [
    ("all studies", "study", lambda s: {}),
    ("all series", "series", lambda s: {}),
    ("all instances", "instance", lambda s: {}),
    ("PatientID", "study", lambda s: {"search_filters": {"PatientID": first(s, "patient")[0]}}),
    ("StudyDate range", "study", lambda s: {"search_filters": {"StudyDate": "20020101-20071231"}}),
    ("StudyDate up to", "study", lambda s: {"search_filters": {"StudyDate": "-20050101"}}),
    ("StudyDate from", "study", lambda s: {"search_filters": {"StudyDate": "20080101-"}}),
    ("StudyTime range", "study", lambda s: {"search_filters": {"StudyTime": "1200-1300"}}),
    ("ModalitiesInStudy CT", "study", lambda s: {"search_filters": {"ModalitiesInStudy": "CT"}}),
    ("ModalitiesInStudy SR", "study", lambda s: {"search_filters": {"ModalitiesInStudy": "SR"}}),
    ("ModalitiesInStudy OT", "study", lambda s: {"search_filters": {"ModalitiesInStudy": "OT"}}),
    # No description survives the Basic profile: both match nothing, `*` included.
    ("StudyDescription *", "study", lambda s: {"search_filters": {"StudyDescription": "*CHEST*"}}),
    ("StudyDescription ?", "study", lambda s: {"search_filters": {"StudyDescription": "CT?CHEST"}}),
    ("fuzzymatching=false", "study", lambda s: {"fuzzymatching": False, "search_filters": {"PatientID": s.patient(1)}}),
    ("includefield", "study", lambda s: {"fields": ["PatientAge", "00101030"]}),
    ("includefield=all", "study", lambda s: {"fields": ["all"]}),
    ("series Modality", "series", lambda s: {"search_filters": {"Modality": "CT"}}),
    ("series of a study", "series", lambda s: {"study_instance_uid": first(s, "study")[0]}),
    ("instances of a study", "instance", lambda s: {"study_instance_uid": first(s, "study")[-1]}),
    ("instances SOPClassUID", "instance", lambda s: {"search_filters": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}}),
    ("StudyInstanceUID list", "study", lambda s: {"search_filters": {"StudyInstanceUID": ",".join(s.studies()[:3])}}),
]  # fmt: skip


def search(client: Any, level: str, **kwargs: Any) -> list[dict[str, Any]]:
    method = {"study": client.search_for_studies, "series": client.search_for_series}.get(level)
    return (method or client.search_for_instances)(**kwargs)


@pytest.mark.parametrize(("label", "level", "kwargs_of"), QUERIES, ids=[q[0] for q in QUERIES])
def test_searches_find_the_same_uids(servers: Servers, label: str, level: str, kwargs_of: Callable) -> None:
    kwargs = kwargs_of(servers)
    ours = search(servers.deid, level, **kwargs)
    theirs = search(servers.orthanc, level, **kwargs)
    # A study whose instances disagree on a study attribute (each sample image has its own Study
    # Time) answers with its first instance's value here, with its first received one in Orthanc.
    keys = {f"{tag_for_keyword(k) or int(k, 16):08X}" for k in kwargs.get("search_filters", {})}
    unsure = {study for study, tags in _ambiguous(servers).items() if keys & tags}
    assert {r for r in uids(ours, level) if r not in unsure} == {r for r in uids(theirs, level) if r not in unsure}
    assert len(ours) == len(uids(ours, level))  # one result per entity
    if label.startswith("all "):
        assert uids(ours, level) == uids(search(servers.folder, level), level)
        assert len(ours) == servers.count(level)


def test_the_folder_oracle_agrees_on_patient_and_study_keys(servers: Servers) -> None:
    for patient in first(servers, "patient"):
        filters = {"PatientID": patient}
        expected = uids(servers.folder.search_for_studies(search_filters=filters), "study")
        assert uids(servers.deid.search_for_studies(search_filters=filters), "study") == expected
    for study in first(servers, "study"):
        expected = uids(servers.folder.search_for_series(study_instance_uid=study), "series")
        assert uids(servers.deid.search_for_series(study_instance_uid=study), "series") == expected
        expected = uids(servers.folder.search_for_instances(study_instance_uid=study), "instance")
        assert uids(servers.deid.search_for_instances(study_instance_uid=study), "instance") == expected


_AMBIGUOUS: dict[int, dict[str, set[str]]] = {}


def _ambiguous(servers: Servers) -> dict[str, set[str]]:
    if id(servers) not in _AMBIGUOUS:
        _AMBIGUOUS[id(servers)] = _ambiguous_tags(servers)
    return _AMBIGUOUS[id(servers)]


def _ambiguous_tags(servers: Servers) -> dict[str, set[str]]:
    """Per study, the top-level tags whose value differs between its instances (the samples give
    each image its own Study Time): a study result may carry any one of them."""
    out: dict[str, set[str]] = {}
    for study in first(servers, "study"):
        values: dict[str, set[str]] = {}
        for item in servers.deid.retrieve_study_metadata(study):
            for tag, element in item.items():
                values.setdefault(tag, set()).add(repr(element.get("Value")))
        out[study] = {t for t, v in values.items() if len(v) > 1}
    return out


@pytest.mark.parametrize(
    ("level", "kwargs", "only_ours", "only_theirs"),
    [
        ("study", {}, {AVAILABILITY}, {CHARSET}),
        ("series", {}, {AVAILABILITY}, {CHARSET}),
        ("instance", {}, {AVAILABILITY}, {CHARSET}),
        ("instance", {"study": True}, {AVAILABILITY}, {CHARSET} | STUDY_KEYS),
        # Orthanc 1.10 ignores includefield=all; deidflow adds the level's optional keys it has.
        ("study", {"fields": ["all"]}, None, {CHARSET}),
    ],
)
def test_results_carry_the_same_values(
    servers: Servers, level: str, kwargs: dict[str, Any], only_ours: set[str] | None, only_theirs: set[str]
) -> None:
    if kwargs.pop("study", False):
        kwargs["study_instance_uid"] = first(servers, "study")[0]
    ambiguous = _ambiguous(servers)
    ours = by_uid(search(servers.deid, level, **kwargs), level)
    theirs = by_uid(search(servers.orthanc, level, **kwargs), level)
    extra_ours: set[str] = set()
    extra_theirs: set[str] = set()
    for uid, mine in ours.items():
        other = theirs[uid]
        extra_ours |= set(mine) - set(other)
        extra_theirs |= set(other) - set(mine)
        skip = ambiguous[mine[STUDY]["Value"][0]] | {CHARSET}
        for tag in (set(mine) & set(other)) - skip:
            a, b = mine[tag], other[tag]
            assert a["vr"] == b["vr"], (tag, a, b)
            if tag == "00081190":  # each server's own root, the same resource under it
                assert a["Value"][0].split("/studies/", 1)[1] == b["Value"][0].split("/studies/", 1)[1]
                continue
            assert a.get("Value") == b.get("Value"), (tag, a, b)
        # The counts and the modalities are the caller's visible ones: here, everything.
        for tag in ("00201206", "00201208", "00201209", "00080061"):
            if tag in other:
                assert mine[tag]["Value"] == other[tag]["Value"], tag
    if only_ours is not None:
        assert extra_ours == only_ours
    # Orthanc says its character set only where the header itself has none, or a different one.
    assert extra_theirs <= only_theirs


def test_limit_and_offset_page_through_the_same_results(servers: Servers) -> None:
    for client in (servers.deid, servers.orthanc):
        everything = [r[STUDY]["Value"][0] for r in client.search_for_studies()]
        pages = [[r[STUDY]["Value"][0] for r in client.search_for_studies(limit=3, offset=n)] for n in (0, 3, 6)]
        assert [u for page in pages for u in page] == everything  # each server's own order
        assert client.search_for_studies(offset=100) == []
    answer = servers.deid_session.get(f"{servers.deid_url}/studies", params={"limit": "2"})
    assert "additional results" in answer.headers["Warning"]


def test_uid_lists_and_wildcards(servers: Servers) -> None:
    studies = first(servers, "study")[:3]
    deid, orthanc = servers.deid_session, servers.orthanc_session

    def count(session: requests.Session, url: str, params: dict[str, str]) -> int:
        answer = session.get(f"{url}/studies", params=params)
        assert answer.status_code == 200, answer.text
        return len(answer.json())

    for separator in (",", "\\"):
        assert count(deid, servers.deid_url, {"StudyInstanceUID": separator.join(studies)}) == 3
    # The key repeated is a list here too.
    repeated = "&".join(f"StudyInstanceUID={u}" for u in studies)
    assert len(deid.get(f"{servers.deid_url}/studies?{repeated}").json()) == 3
    # Orthanc 1.10 takes a comma list, but not a backslash one, and of a repeated key only one value.
    assert count(orthanc, servers.orthanc_url, {"StudyInstanceUID": "\\".join(studies)}) == 0
    assert len(orthanc.get(f"{servers.orthanc_url}/studies?{repeated}").json()) == 1
    # dicomweb-client sends a Python list as the key repeated.
    listed = servers.deid.search_for_studies(search_filters={"StudyInstanceUID": studies})
    assert uids(listed, "study") == set(studies)
    # PN wildcards: deidflow matches case-insensitively, as the folder oracle does; Orthanc 1.10's
    # plugin finds nothing for a wildcard on the pseudonymous Patient's Name.
    expected = len(servers.folder.search_for_studies(search_filters={"PatientName": "P*"}))
    assert expected == servers.count("study")
    assert count(deid, servers.deid_url, {"PatientName": "P*"}) == expected
    assert count(deid, servers.deid_url, {"PatientName": "p*"}) == expected
    assert count(orthanc, servers.orthanc_url, {"PatientName": "P*"}) == 0
    # Two modalities in one key: undefined without multiplevaluematching (PS3.4 C.2.2.2.8); deidflow
    # matches the value as written, Orthanc reads the comma as "any of".
    assert count(deid, servers.deid_url, {"ModalitiesInStudy": "CT,SR"}) == 0
    assert count(orthanc, servers.orthanc_url, {"ModalitiesInStudy": "CT,SR"}) == count(
        deid, servers.deid_url, {"ModalitiesInStudy": "CT"}
    )


def test_status_codes(servers: Servers) -> None:
    deid, orthanc = servers.deid_session, servers.orthanc_session
    assert deid.get(f"{servers.deid_url}/studies", params={"NoSuchKeyword": "1"}).status_code == 400
    assert orthanc.get(f"{servers.orthanc_url}/studies", params={"NoSuchKeyword": "1"}).status_code == 200
    assert deid.get(f"{servers.deid_url}/studies", params={"limit": "x"}).status_code == 400
    assert deid.get(f"{servers.deid_url}/studies/2.25.1/metadata").status_code == 404
    assert orthanc.get(f"{servers.orthanc_url}/studies/2.25.1/metadata").status_code == 404
    assert requests.get(f"{servers.deid_url}/studies").status_code == 401


# -- WADO-RS: metadata, frames, bulk data, instances ------------------------------------------------------


def _same_element(ours: dict[str, Any], theirs: dict[str, Any]) -> bool:
    if ours["vr"] != theirs["vr"] and {ours["vr"], theirs["vr"]} - {"OB", "OW", "UN"}:
        return False
    if "Value" in ours or "Value" in theirs:
        if ours.get("vr") == "SQ":
            items = zip(ours.get("Value") or [], theirs.get("Value") or [], strict=True)
            return all(set(a) == set(b) and all(_same_element(a[t], b[t]) for t in a) for a, b in items)
        return ours.get("Value") == theirs.get("Value")
    return True  # empty, BulkDataURI or InlineBinary: bulk data by reference or inline, either


def test_metadata_is_the_same_header(servers: Servers) -> None:
    encapsulated = set()
    for uid, path in servers.files.items():
        if pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID.is_encapsulated:
            encapsulated.add(uid)
    seen = 0
    for study in first(servers, "study"):
        ours = by_uid(servers.deid.retrieve_study_metadata(study), "instance")
        theirs = by_uid(servers.orthanc.retrieve_study_metadata(study), "instance")
        assert set(ours) == set(theirs)
        for uid, mine in ours.items():
            other = theirs[uid]
            for item in (mine, other):
                Dataset.from_json(item, lambda tag, vr, uri: b"")
            # Orthanc leaves encapsulated Pixel Data out of the metadata; deidflow refers to it.
            assert set(mine) - set(other) == ({"7FE00010"} if uid in encapsulated else set())
            assert set(other) <= set(mine)
            for tag in set(mine) & set(other):
                assert _same_element(mine[tag], other[tag]), (tag, mine[tag], other[tag])
            # The header is the stored file's.
            stored = pydicom.dcmread(servers.files[uid], stop_before_pixels=True)
            assert Dataset.from_json(mine, lambda tag, vr, uri: b"").SOPInstanceUID == stored.SOPInstanceUID
            seen += 1
        series = {m[SERIES]["Value"][0] for m in ours.values()}
        for one in series:
            assert uids(servers.deid.retrieve_series_metadata(study, one), "instance") == uids(
                servers.orthanc.retrieve_series_metadata(study, one), "instance"
            )
    assert seen == len(servers.files)


def _stored_frames(ds: Dataset) -> list[bytes]:
    count = int(ds.get("NumberOfFrames") or 1)
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    data = bytes(ds.PixelData)
    size = len(data) // count
    return [data[i * size : (i + 1) * size] for i in range(count)]


def _decoded(path: Path, frame: bytes) -> np.ndarray:
    """One frame's bytes decoded by pydicom on their own, in the stored file's image description."""
    one = pydicom.dcmread(path)
    encapsulated = one.file_meta.TransferSyntaxUID.is_encapsulated
    del one.PixelData
    one.NumberOfFrames = 1
    one.PixelData = encapsulate([bytes(frame)]) if encapsulated else bytes(frame)
    one["PixelData"].VR = "OB" if encapsulated or one.BitsAllocated <= 8 else "OW"
    return one.pixel_array


def _frame_list(count: int) -> list[int]:
    return list(range(1, count + 1))


def test_frames_are_the_stored_bytes(servers: Servers) -> None:
    checked = 0
    for uid, path in servers.files.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        if "PixelData" not in ds:
            continue
        stored = _stored_frames(ds)
        where = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid)
        ours = servers.deid.retrieve_instance_frames(*where, frame_numbers=_frame_list(len(stored)))
        theirs = servers.orthanc.retrieve_instance_frames(
            *where, frame_numbers=_frame_list(len(stored)), media_types=OCTETS_ANY
        )
        assert ours == theirs == stored, path.name
        pixels = ds.pixel_array
        for index, frame in enumerate(ours):
            expected = pixels[index] if len(stored) > 1 else pixels
            assert np.array_equal(_decoded(path, frame), expected), (path.name, index)
        checked += 1
    assert checked == len(servers.files) - 2  # every image: the samples' two SR documents have none


def test_frames_say_their_media_type(servers: Servers) -> None:
    wanted = {"1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.90": "image/jp2"}
    wanted |= {"1.2.840.10008.1.2.5": "image/dicom-rle", "1.2.840.10008.1.2": "application/octet-stream"}
    found = {}
    for uid, path in servers.files.items():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if syntax not in wanted:
            continue
        tail = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{uid}/frames/1"
        accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        parts = []
        for session, url in ((servers.deid_session, servers.deid_url), (servers.orthanc_session, servers.orthanc_url)):
            answer = session.get(url + tail, headers={"Accept": accept})
            assert answer.status_code == 200
            parts.append(next(line for line in answer.content.split(b"\r\n") if line.startswith(b"Content-Type")))
        found[syntax] = parts
        # Asked for what only transcoding could give: 406.
        answer = servers.deid_session.get(
            servers.deid_url + tail,
            headers={"Accept": 'multipart/related; type="image/jpeg"' if syntax == "1.2.840.10008.1.2" else
                     'multipart/related; type="application/octet-stream"'},
        )  # fmt: skip
        assert answer.status_code == 406
    assert set(found) == set(wanted)
    for syntax, (ours, theirs) in found.items():
        # deidflow labels a frame as asked (octet-stream, the stored syntax); Orthanc by its media type.
        assert ours == f"Content-Type: application/octet-stream; transfer-syntax={syntax}".encode()
        assert theirs == f"Content-Type: {wanted[syntax]}; transfer-syntax={syntax}".encode()


def test_bulkdata_is_the_stored_value(servers: Servers) -> None:
    checked = 0
    for uid, path in servers.files.items():
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            continue
        metadata = servers.deid.retrieve_instance_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid)
        theirs = servers.orthanc.retrieve_instance_metadata(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid)
        for tag, element in metadata.items():
            if "BulkDataURI" not in element:
                continue
            value = servers.deid.retrieve_bulkdata(element["BulkDataURI"])
            assert value == [bytes(ds[int(tag, 16)].value)], (path.name, tag)
            if "BulkDataURI" in theirs.get(tag, {}):
                uri = theirs[tag]["BulkDataURI"]
                assert servers.orthanc.retrieve_bulkdata(uri, media_types=("application/octet-stream",)) == value
            checked += 1
    assert checked >= 5


def test_instances_download_as_stored(servers: Servers) -> None:
    for uid, path in servers.files.items():
        stored = pydicom.dcmread(path)
        where = (str(stored.StudyInstanceUID), str(stored.SeriesInstanceUID), uid)
        ours = servers.deid.retrieve_instance(*where)
        theirs = servers.orthanc.retrieve_instance(*where)
        assert ours == stored and theirs == stored, path.name
        assert ours.file_meta.TransferSyntaxUID == stored.file_meta.TransferSyntaxUID
        # Byte for byte: the one part of the answer is the research file.
        tail = "/studies/{}/series/{}/instances/{}".format(*where)
        answer = servers.deid_session.get(
            servers.deid_url + tail, headers={"Accept": 'multipart/related; type="application/dicom"'}
        )
        boundary = answer.headers["Content-Type"].split("boundary=")[1].encode()
        (part,) = [p for p in answer.content.split(b"--" + boundary) if p.strip(b"-\r\n")]
        assert part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n") == path.read_bytes()
