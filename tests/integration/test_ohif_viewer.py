"""A stock OHIF viewer (npm's prebuilt @ohif/app) in headless Chromium, reading a real Orthanc over DICOMweb.

This proves the harness the research API's viewer test will use: OhifServer serves OHIF and proxies
/dicomweb to the DICOMweb root on the same origin (no CORS), the proxy adds the upstream's
credentials, and OHIF itself sends a bearer token (app_config's bearer_token) as the research API
will require. One Orthanc, one OHIF server and one browser for the whole module.

Needs /usr/bin/chromium (Debian's chromium), npm (to fetch OHIF once into .cache/ohif), the Python
playwright package (no browser download), and Debian's Orthanc with its DICOMweb plugin; skipped
with the reason when one is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from deidflow.local.ohif import OhifServer, app_config
from deidflow.local.orthanc import LocalOrthanc, OrthancNotInstalled, _auth_header, find_orthanc, stow_rs

from .ohif_browser import OhifBrowser, dicomweb_sequence, in_viewer_order

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "drop"
# Images only: the two SR documents of the samples are not what this test looks at.
SAMPLE_FILES = [
    *(SAMPLES / "patient0" / f"img000{i}.dcm" for i in (0, 1, 2)),
    *(SAMPLES / "patient1" / f"img000{i}.dcm" for i in (4, 5, 6)),
    SAMPLES / "ultrasound" / "echo0000.dcm",
]
TOKEN = "deidflow-test-token"  # what OHIF sends; the proxy swaps it for Orthanc's own credentials


@pytest.fixture(scope="module")
def studies() -> dict[str, dict[str, str]]:
    """StudyInstanceUID → what the list should show, read from the files sent."""
    found: dict[str, dict[str, str]] = {}
    for path in SAMPLE_FILES:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        name = ds.PatientName
        found[str(ds.StudyInstanceUID)] = {
            "patient": f"{name.family_name}, {name.given_name}",
            "modality": str(ds.Modality),
            "series": str(ds.SeriesInstanceUID),
        }
    return found


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    try:
        installation = find_orthanc()
    except OrthancNotInstalled as exc:
        pytest.skip(f"no local Orthanc: {exc}")
    base = tmp_path_factory.mktemp("ohif-orthanc")
    # Kept in Orthanc (not handed over to the drop folder and deleted) so that OHIF can read it back.
    # A reference Orthanc the viewer reads back from: only its reader user may (its sender may not).
    with LocalOrthanc(
        base / "state", base / "drop", installation=installation, delete_after_forward=False, reader=True
    ) as server:
        assert stow_rs(server.url, server.credentials, SAMPLE_FILES) == len(SAMPLE_FILES)
        yield server


@pytest.fixture(scope="module")
def viewer(dist: Path, orthanc: LocalOrthanc) -> Iterator[OhifServer]:
    with OhifServer(
        dist,
        upstream=orthanc.dicomweb_url,
        upstream_authorization=_auth_header(orthanc.reader_credentials),
        config=lambda root: app_config(root, bearer_token=TOKEN),
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser(viewer: OhifServer, ohif_artifacts: Path) -> Iterator[OhifBrowser]:
    started = time.monotonic()
    with OhifBrowser(viewer.url, artifacts=ohif_artifacts) as session:
        yield session
    print(f"ohif browser session: {time.monotonic() - started:.1f} s")


# -- the tests ---------------------------------------------------------------------------------------


def test_the_study_list_shows_the_uploaded_studies(
    browser: OhifBrowser, viewer: OhifServer, studies: dict[str, dict[str, str]]
) -> None:
    rows, uids = browser.open_study_list(expect_rows=len(studies))
    assert sorted(uids) == sorted(studies)
    assert sorted(row.patient for row in rows) == sorted(s["patient"] for s in studies.values())
    assert sorted(row.modalities for row in rows) == sorted(s["modality"] for s in studies.values())
    assert all(e.status == 200 for e in browser.log.dicomweb(viewer.dicomweb_root))


@pytest.mark.parametrize("modality", ["CT", "US"])
def test_the_viewer_draws_a_study_over_dicomweb(
    browser: OhifBrowser, viewer: OhifServer, studies: dict[str, dict[str, str]], modality: str
) -> None:
    uid = next(u for u, s in studies.items() if s["modality"] == modality)
    first = len(browser.log.entries)
    proxied_first = len(viewer.proxied)
    state = browser.open_viewer(uid, name=f"viewer-{modality.lower()}")
    browser.wait_for_quiet()
    print(f"{modality}: image drawn {state.seconds:.1f} s after navigation; {state.image}")

    assert state.image.non_blank(), f"blank viewport: {state.image}; see {state.viewport_screenshot}"
    assert [s.modality for s in state.series] == [modality]

    requests = [e for e in browser.log.entries[first:] if e.url.startswith(viewer.dicomweb_root + "/")]
    kinds = dicomweb_sequence(requests)
    assert in_viewer_order(kinds), kinds
    assert all(uid in e.url for e in requests if e.path.count("/studies/")), "a request for another study"
    assert [e for e in requests if e.status != 200] == []
    # OHIF sent the configured token on every DICOMweb request; the proxy replaced it upstream.
    assert {e.authorization for e in requests} == {"Bearer"}
    assert {p.authorization for p in viewer.proxied[proxied_first:]} == {"Bearer"}
    assert {p.status for p in viewer.proxied[proxied_first:]} == {200}
    # Nothing went anywhere but the one origin that serves OHIF and proxies DICOMweb.
    assert browser.log.foreign(viewer.url) == []
    assert browser.log.unanswered() == []
