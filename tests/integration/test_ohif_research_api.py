"""A stock OHIF viewer (npm's @ohif/app) in headless Chromium, reading deidflow's own research API.

Not Orthanc: `LocalResearchApi` serves the research API's real Lambda handler on loopback, behind a
JWT check against moto's Cognito, over a research folder that the real workflow (on moto) wrote
from samples/drop. OhifServer serves OHIF and proxies /dicomweb to the API on the same origin,
adding a real Cognito access token of one user (the browser never holds it); one test also has OHIF
send the token itself (app_config's bearer_token, the proxy passing the browser's header on).

The users are those of samples/research/access.yaml: alice (ct-team: chest CT, series level), bob
(us-teaching: ultrasound, view only) and carol (no profile: the API answers her 403).

Needs what test_ohif_viewer.py needs but Orthanc: /usr/bin/chromium, npm (once, into .cache/ohif)
and the playwright package; skipped with the reason when one is missing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from deidflow.local.api import LocalResearchApi
from deidflow.local.ohif import OhifServer, app_config

from .ohif_browser import OhifBrowser, dicomweb_kind, in_viewer_order

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACCESS = REPO / "samples" / "research" / "access.yaml"
KEY = bytes(range(32))
# What OHIF reports when a DICOMweb answer is not what it expected (its request helper, the data
# source, the image loader): none of it may show in the console of a session that works.
DICOMWEB_TROUBLE = re.compile(r"dicomweb|request failed|failed to load resource|status of \d{3}|multipart", re.I)


@dataclass(frozen=True)
class Instance:
    study: str
    series: str
    modality: str


@pytest.fixture(scope="module")
def research_folder(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """samples/drop through the real workflow on moto, once for the module (after `dist`: no run
    when the browser side is missing)."""
    from deidflow.local.workflow import run_local

    folder = tmp_path_factory.mktemp("ohif-research") / "research"
    started = time.monotonic()
    run = run_local([REPO / "samples" / "drop"], folder, KEY, project=REPO, text_detector="local")
    assert run.failed_executions == 0
    print(f"local run: {len(run.research_files)} instances in {time.monotonic() - started:.1f} s")
    return folder


@pytest.fixture(scope="module")
def instances(research_folder: Path) -> list[Instance]:
    found = []
    for path in sorted((research_folder / "studies").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.append(Instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.Modality)))
    return found


def studies_with(instances: list[Instance], modality: str) -> list[str]:
    return sorted({i.study for i in instances if i.modality == modality})


def series_with(instances: list[Instance], study: str, modality: str) -> list[str]:
    return sorted({i.series for i in instances if i.study == study and i.modality == modality})


@pytest.fixture(scope="module")
def api(research_folder: Path) -> Iterator[LocalResearchApi]:
    started = time.monotonic()
    with LocalResearchApi(research_folder, ACCESS, project=REPO) as local:
        print(f"local research API up in {time.monotonic() - started:.1f} s ({local.instances} instances)")
        yield local


@contextmanager
def session(
    user: str, api: LocalResearchApi, dist: Path, artifacts: Path, *, token_in_browser: bool = False
) -> Iterator[tuple[OhifServer, OhifBrowser]]:
    """OHIF for one user: its own server (the proxy holds the user's token, or OHIF does) and browser."""
    token = api.token(user)  # a real login to the API's user pool
    if token_in_browser:
        server = OhifServer(dist, upstream=api.dicomweb_url, config=lambda root: app_config(root, bearer_token=token))
    else:
        server = OhifServer(dist, upstream=api.dicomweb_url, upstream_authorization=f"Bearer {token}")
    started = time.monotonic()
    with server, OhifBrowser(server.url, artifacts=artifacts) as browser:
        yield server, browser
        print(f"{user}: OHIF session {time.monotonic() - started:.1f} s")
        if browser.console_errors:
            print(f"{user}: console errors: {browser.console_errors}")


def api_log_since(api: LocalResearchApi, start: int) -> list[tuple[str, str, int]]:
    return list(api.requests[start:])


def assert_clean(browser: OhifBrowser, server: OhifServer) -> None:
    """Nothing left the one origin, everything was answered, nothing in the page broke."""
    assert browser.log.foreign(server.url) == []
    assert browser.log.unanswered() == []
    assert browser.page_errors == []
    assert [e for e in browser.console_errors if DICOMWEB_TROUBLE.search(e)] == []


def open_and_check(
    browser: OhifBrowser,
    server: OhifServer,
    api: LocalResearchApi,
    study: str,
    modality: str,
    expected_series: list[str],
    name: str,
) -> None:
    api_first, first = len(api.requests), len(browser.log.entries)
    state = browser.open_viewer(study, name=name)
    browser.wait_for_quiet()
    print(f"{name}: image drawn {state.seconds:.1f} s after navigation; {state.image}")

    assert state.image.non_blank(), f"blank viewport: {state.image}; see {state.viewport_screenshot}"
    # The series panel lists the study's visible series (never empty, never the hidden ones).
    assert [s.modality for s in state.series] == [modality] * len(expected_series)

    served = api_log_since(api, api_first)
    kinds = dicomweb_sequence_of_paths([path for _, path, _ in served])
    print(f"{name}: the API answered {len(served)} requests: {kinds}")
    assert in_viewer_order(kinds), kinds
    assert {status for _, _, status in served} == {200}
    assert all(study in path for _, path, _ in served if "/studies/" in path), "a request for another study"
    requests = [e for e in browser.log.entries[first:] if e.url.startswith(server.dicomweb_root + "/")]
    assert {e.status for e in requests} == {200}
    assert len(requests) == len(served), "every DICOMweb request of the page reached the API, once"


def dicomweb_sequence_of_paths(paths: list[str]) -> list[str]:
    kinds: list[str] = []
    for path in paths:
        kind = dicomweb_kind(path)
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    return kinds


# -- the tests ---------------------------------------------------------------------------------------


def test_alice_sees_the_two_chest_cts_and_each_draws(
    api: LocalResearchApi, dist: Path, ohif_artifacts: Path, instances: list[Instance]
) -> None:
    ct = studies_with(instances, "CT")
    assert len(ct) == 2 and not set(ct) & set(studies_with(instances, "US"))
    api_first = len(api.requests)
    with session("alice", api, dist, ohif_artifacts / "research-api" / "alice") as (server, browser):
        rows, uids = browser.open_study_list(expect_rows=len(ct))
        assert sorted(uids) == ct
        assert [row.modalities for row in rows] == ["CT", "CT"]
        assert api_log_since(api, api_first) == [("GET", "/dicomweb/studies", 200)]
        for n, study in enumerate(ct):
            open_and_check(browser, server, api, study, "CT", series_with(instances, study, "CT"), f"alice-ct-{n}")
        assert {p.authorization for p in server.proxied} == {None}, "the browser never held a token"
        assert_clean(browser, server)


def test_bob_sees_the_ultrasound_only_and_it_draws(
    api: LocalResearchApi, dist: Path, ohif_artifacts: Path, instances: list[Instance]
) -> None:
    us = studies_with(instances, "US")
    assert len(us) == 1
    with session("bob", api, dist, ohif_artifacts / "research-api" / "bob") as (server, browser):
        rows, uids = browser.open_study_list(expect_rows=1)
        assert uids == us
        assert [row.modalities for row in rows] == ["US"]
        open_and_check(browser, server, api, us[0], "US", series_with(instances, us[0], "US"), "bob-us")
        assert_clean(browser, server)


def test_carol_gets_an_empty_list_and_ohif_says_the_source_failed(
    api: LocalResearchApi, dist: Path, ohif_artifacts: Path
) -> None:
    api_first = len(api.requests)
    with session("carol", api, dist, ohif_artifacts / "research-api" / "carol") as (server, browser):
        rows, uids = browser.open_study_list(expect_rows=0)
        assert browser.search_status == 403
        # What OHIF 3.13 does with a 403 to its study search: an empty list and its connection
        # error dialog (the API's reason reaches the console only), no crash.
        browser.page.wait_for_selector("text=Data Source Connection Error")
        browser.page.wait_for_selector("text=No studies available")
        browser.screenshot("carol-study-list")
        assert (rows, uids) == ([], [])
        assert api_log_since(api, api_first) == [("GET", "/dicomweb/studies", 403)]
        assert browser.page_errors == []
        assert browser.log.foreign(server.url) == []


def test_ohif_can_send_the_token_itself(
    api: LocalResearchApi, dist: Path, ohif_artifacts: Path, instances: list[Instance]
) -> None:
    """OHIF's user authentication service sends alice's token on every request, the series search
    included (an empty series panel is what a request without it would give)."""
    study = studies_with(instances, "CT")[0]
    artifacts = ohif_artifacts / "research-api" / "alice-token-in-browser"
    with session("alice", api, dist, artifacts, token_in_browser=True) as (server, browser):
        rows, _ = browser.open_study_list(expect_rows=2)
        assert len(rows) == 2
        open_and_check(browser, server, api, study, "CT", series_with(instances, study, "CT"), "alice-ct-own-token")
        requests = browser.log.dicomweb(server.dicomweb_root)
        assert {dicomweb_kind(e.path) for e in requests} >= {"studies", "series", "metadata", "frames"}
        assert {e.authorization for e in requests} == {"Bearer"}
        assert {p.authorization for p in server.proxied} == {"Bearer"}
        assert_clean(browser, server)


def test_the_local_api_command_serves_ohif_with_a_users_token(
    research_folder: Path, dist: Path, tmp_path: Path, instances: list[Instance]
) -> None:
    """`deidflow local api --ohif`: the printed viewer URL serves OHIF, configured with its own
    same-origin DICOMweb root, whose proxy answers as alice (the access file's first user)."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    deidflow = [sys.executable, "-c", "import sys; from deidflow.cli import main; sys.exit(main())"]
    command = [*deidflow, "local", "api", str(research_folder), "--access", str(ACCESS)]
    command += ["--port", "0", "--ohif", "--ohif-port", "0", "--state", str(tmp_path / "state"), "--project", str(REPO)]
    env = {**os.environ, "DEIDFLOW_OHIF_CACHE": str(dist.parents[1])}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout is not None
        printed = []
        for line in process.stdout:
            printed.append(line)
            if line.startswith("Ctrl-C"):
                break
        urls = {k.strip(): v.split()[0] for k, _, v in (p.partition(":") for p in printed if p.startswith("  "))}
        print(f"local api --ohif up in {time.monotonic() - started:.1f} s: {''.join(printed)}")
        assert "(OHIF as alice)" in "".join(printed)
        viewer = urls["viewer"].rstrip("/")
        with urllib.request.urlopen(viewer + "/") as page:
            assert b"<html" in page.read().lower()
        with urllib.request.urlopen(viewer + "/app-config.js") as config:
            assert f"{viewer}/dicomweb".encode() in config.read()
        with urllib.request.urlopen(viewer + "/dicomweb/studies") as answer:  # no token: the proxy adds alice's
            found = sorted(s["0020000D"]["Value"][0] for s in json.loads(answer.read()))
        assert found == studies_with(instances, "CT")
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    assert not (tmp_path / "state" / "api.json").exists()
