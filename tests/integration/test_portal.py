"""The researcher portal (portal/: static HTML, JS and CSS) in headless Chromium, on the local
research API: sign in (the local form), permissions, search (QIDO fields and the query language),
a cohort and an export of it run as jobs on their real state machines, a file downloaded through
its presigned link checked against the manifest's SHA-256; another user sees none of it.

The page runs under the CloudFront policy's CSP (enforced here by adding the header to the portal's
answers): a violation shows in the console and fails the test.

Data: three synthetic studies (two CT, one MR) de-identified by the real workflow (run_local).
alice (group lung) may search, view, download and export CT; bob may do the same with MR only.
Needs /usr/bin/chromium and the playwright package; skipped with the reason when one is missing.
Screenshots: test-artifacts/portal/*.png.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from deidflow.local.api import LocalResearchApi
from deidflow.testing.synthetic import make_instance, make_patient, make_series, make_study

from tests.conftest import REPO, TEST_KEY

from .ohif_browser import CHROMIUM, OhifBrowser

pytestmark = pytest.mark.integration

ARTIFACTS = REPO / "test-artifacts" / "portal"
VIEWER = "http://viewer.invalid/viewer?StudyInstanceUIDs={study}"
# The portal's CSP in the cloud (template.yaml, PortalHeadersPolicy), the API being this origin here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PROFILES = """\
version: 1
profiles:
  lung-ct:
    description: Chest CT for the lung group
    approval: IRB-LUNG-1
    expires: 2099-12-31
    scope: {filter: Modality StrEquals CT}
    level: series
    actions: [search, view, download, export]
    export:
      destinations: [{name: managed}]
  old-ct:
    description: A closed CT study
    approval: IRB-OLD-0
    expires: 2001-01-01
    scope: {filter: Modality StrEquals CT}
    level: study
    actions: [search]
  neuro-mr:
    description: Brain MR
    approval: IRB-NEURO-2
    scope: {filter: Modality StrEquals MR}
    level: series
    actions: [search, view, download, export]
    export:
      destinations: [{name: managed}]
assignments:
  - groups: [lung]
    profiles: [lung-ct, old-ct]
  - users: [bob]
    profiles: [neuro-mr]
"""
ACCESS = """\
profiles: profiles.yaml
users:
  - {username: alice, groups: [lung]}
  - {username: bob}
  - {username: audrey, groups: [auditors]}   # no profile: the audit trail only
"""
JOB_SECONDS = 180


def _originals(folder: Path) -> None:
    rng = np.random.default_rng(31)
    ct_a = make_study(make_patient(0), 0, rng)
    list(make_series(ct_a, rng, 3))
    ct_b = make_study(make_patient(1), 0, rng)
    list(make_series(ct_b, rng, 2))
    mr = make_study(make_patient(2), 0, rng)
    for n in (1, 2):
        make_instance(mr, "1.2.826.0.1.3680043.8.498.91", 2, n, rng, modality="MR")
    for s, study in enumerate((ct_a, ct_b, mr)):
        for n, instance in enumerate(study.instances):
            path = folder / f"study{s}" / f"{n}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            instance.dataset.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: sudo apt-get install -y chromium")
    pytest.importorskip("playwright", reason="the playwright package (requirements-dev.txt) is not installed")
    return CHROMIUM


@pytest.fixture(scope="module")
def research(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deidflow.local.workflow import run_local

    root = tmp_path_factory.mktemp("portal")
    _originals(root / "drop")
    run = run_local([root / "drop"], root / "research", TEST_KEY, project=REPO)
    assert run.failed_executions == 0 and len(run.research_files) == 7
    (root / "profiles.yaml").write_text(PROFILES)
    (root / "access.yaml").write_text(ACCESS)
    return root / "research"


@pytest.fixture(scope="module")
def modalities(research: Path) -> dict[str, set[str]]:
    """The published study UIDs of each modality."""
    found: dict[str, set[str]] = {}
    for path in research.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found.setdefault(str(ds.Modality), set()).add(str(ds.StudyInstanceUID))
    return found


@pytest.fixture(scope="module")
def api(research: Path) -> Iterator[LocalResearchApi]:
    with LocalResearchApi(research, research.parent / "access.yaml", project=REPO, viewer_url=VIEWER) as running:
        yield running


class Portal:
    """One user's browser on the portal, with the CSP enforced and a screenshot per step."""

    def __init__(self, browser: OhifBrowser, user: str, *, csp: str = CSP):
        self.browser = browser
        self.page: Any = browser.page
        self.user = user
        self.csp = csp
        self.page.route("**/portal/**", self._with_csp)

    def _with_csp(self, route: Any) -> None:
        answer = route.fetch()
        route.fulfill(response=answer, headers={**answer.headers, "content-security-policy": self.csp})

    def shot(self, step: str) -> Path:
        path = self.browser.artifacts / f"{self.user}-{step}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"portal screenshot: {path}")
        return path

    def sign_in(self) -> None:
        page = self.page
        page.goto(self.browser.base_url + "/portal/")
        page.wait_for_selector("#login-local:not([hidden])")
        self.shot("01-sign-in")
        page.select_option("#login-user", self.user)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("#app:not([hidden])")
        assert page.inner_text("#whoami-name") == self.user

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()

    def permissions(self) -> dict[str, dict[str, str]]:
        self.tab("My permissions")
        rows = {}
        for row in self.page.query_selector_all("#profiles tbody tr"):
            cells = [c.inner_text().strip() for c in row.query_selector_all("th, td")]
            rows[row.get_attribute("data-profile")] = {
                "approval": cells[2],
                "expires": cells[3],
                "expired": "expired" in (row.get_attribute("class") or ""),
                "actions": cells[5],
            }
        return rows

    def destinations(self) -> list[str]:
        return [li.get_attribute("data-destination") for li in self.page.query_selector_all("#destinations li")]

    def search_qido(self, **fields: str) -> set[str]:
        page = self.page
        self.tab("Search")
        page.check('input[name="mode"][value="qido"]')
        for name, value in fields.items():
            page.fill(f'#search-form [name="{name}"]', value)
        return self._search()

    def search_query(self, text: str) -> set[str]:
        self.page.check('input[name="mode"][value="query"]')
        self.page.fill("#q-text", text)
        return self._search()

    def _search(self) -> set[str]:
        page = self.page
        page.click("#search-button")
        wait_until(page, "document.querySelector('#search-status').textContent.match(/found|No study|not run/)")
        wait_until(page, "!document.querySelector('#search-button').disabled")
        return {li.get_attribute("data-study") for li in page.query_selector_all("#results li.study")}

    def open_series(self, study: str) -> list[dict[str, Any]]:
        page = self.page
        item = page.locator(f'li.study[data-study="{study}"]')
        item.get_by_role("button", name="Show series").click()
        item.locator("li.series-item").first.wait_for()
        wait_until(
            page,
            f"[...document.querySelectorAll('li.study[data-study=\"{study}\"] .thumb-box')]"
            ".every(b => b.querySelector('img[data-loaded]') || b.querySelector('.thumb-missing'))",
        )
        shown = []
        for series in item.locator("li.series-item").all():
            size = series.locator("img.thumb").evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.complete])")
            shown.append({"series": series.get_attribute("data-series"), "thumbnail": size})
        return shown

    def job(self, job_id: str, status: str, timeout: float = JOB_SECONDS) -> dict[str, str]:
        """Wait (the page polls) until the job shows `status`; FAILED ends the wait early."""
        self.tab("Cohorts & exports")
        page = self.page
        deadline = time.monotonic() + timeout
        selector = f'li.job[data-job="{job_id}"]'
        while time.monotonic() < deadline:
            item = page.query_selector(selector)
            shown = item.get_attribute("data-status") if item else None
            if shown == status or shown == "FAILED":
                return {"status": shown or "", "text": item.inner_text() if item else ""}
            page.wait_for_timeout(500)
        item = page.query_selector(selector)
        return {"status": "TIMEOUT", "text": item.inner_text() if item else "(not listed)"}

    def jobs(self) -> list[str]:
        self.tab("Cohorts & exports")
        wait_until(
            self.page,
            "document.querySelector('#jobs-status').textContent !== ''"
            " || !document.querySelector('#jobs-empty').hidden",
        )
        return [li.get_attribute("data-job") for li in self.page.query_selector_all("#jobs li.job")]


def wait_until(page: Any, expression: str, timeout: float = 60.0) -> None:
    """Poll a JavaScript expression until it is true. Playwright's wait_for_function compiles its
    predicate with eval, which the page's CSP refuses; page.evaluate goes through the DevTools
    protocol, which the CSP does not govern."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(expression)
        page.wait_for_timeout(100)


def job_id_from(status_text: str) -> str:
    found = re.search(r"\(job ([^)]+)\)", status_text)
    assert found, status_text
    return found.group(1)


def assert_clean(portal: Portal) -> None:
    browser = portal.browser
    assert browser.page_errors == []
    assert [e for e in browser.console_errors if "Content Security Policy" in e] == []


@pytest.fixture(scope="module")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def test_alice_searches_builds_a_cohort_exports_it_and_downloads_a_file(
    api: LocalResearchApi, modalities: dict[str, set[str]], artifacts: Path
) -> None:
    ct, mr = modalities["CT"], modalities["MR"]
    assert len(ct) == 2 and len(mr) == 1
    with OhifBrowser(api.base_url, artifacts=artifacts) as browser:
        portal = Portal(browser, "alice")
        page = portal.page
        portal.sign_in()
        portal.shot("02-signed-in")

        # Her permissions: the two profiles, the old one marked expired; the managed bucket.
        profiles = portal.permissions()
        assert set(profiles) == {"lung-ct", "old-ct"}, profiles
        assert profiles["lung-ct"]["approval"] == "IRB-LUNG-1" and not profiles["lung-ct"]["expired"]
        assert "export" in profiles["lung-ct"]["actions"]
        assert profiles["old-ct"]["expired"], profiles
        assert portal.destinations() == ["managed"]
        assert page.get_by_role("tab", name="Audit trail").is_hidden(), "alice is no auditor"
        portal.shot("03-permissions")

        # QIDO fields: everything she may search, then by modality.
        assert portal.search_qido() == ct
        assert portal.search_qido(ModalitiesInStudy="CT") == ct
        assert portal.search_qido(ModalitiesInStudy="MR") == set()
        assert "No study matches" in page.inner_text("#search-status")
        portal.shot("04-qido-empty")
        assert portal.search_qido(ModalitiesInStudy="") == ct
        study = sorted(ct)[0]
        series = portal.open_series(study)
        assert series and all(s["thumbnail"] and s["thumbnail"][0][0] > 0 for s in series), series
        viewer = page.locator(f'li.study[data-study="{study}"] a.viewer-link')
        assert viewer.get_attribute("href") == VIEWER.replace("{study}", study)
        assert viewer.get_attribute("target") == "_blank"
        portal.shot("05-qido-results-series")

        # The query language: a bad query says why, next to the field; a good one finds the CT.
        assert portal.search_query("Modality Frobnicates CT") == ct, "the last results stay"
        error = page.locator("#q-text-error")
        assert error.is_visible() and "cannot be read" in error.inner_text(), error.inner_text()
        assert page.get_attribute("#q-text", "aria-invalid") == "true"
        portal.shot("06-query-error")
        assert portal.search_query("Modality StrEquals CT AND Rows NbGreater 32") == ct
        assert page.locator("#q-text-error").is_hidden()
        assert portal.search_query("Modality StrEquals MR") == set()
        assert portal.search_query("Modality StrEquals CT") == ct
        query_series = portal.open_series(study)
        assert {s["series"] for s in query_series} == {s["series"] for s in series}
        portal.shot("07-query-results")

        # A cohort from the current query.
        page.fill("#cohort-name", "chest ct")
        page.get_by_role("button", name="Build cohort").click()
        wait_until(
            page,
            "document.querySelector('#cohort-status').textContent.includes('job')"
            " || !document.querySelector('#cohort-error').hidden",
        )
        assert page.locator("#cohort-error").is_hidden(), page.inner_text("#cohort-error")
        cohort = job_id_from(page.inner_text("#cohort-status"))
        done = portal.job(cohort, "SUCCEEDED")
        portal.shot("08-cohort-finished")
        assert done["status"] == "SUCCEEDED", done
        page.locator(f'li.job[data-job="{cohort}"]').get_by_role("button", name=re.compile("Show the manifest")).click()
        page.wait_for_selector("#manifest-table tbody tr")
        assert page.locator("#manifest-table tbody tr").count() == 5  # the five CT instances
        portal.shot("09-cohort-manifest")

        # An export of that cohort to the managed bucket.
        portal.tab("Search")
        page.fill("#export-name", "chest ct dicom")
        page.check('input[name="source"][value="cohort"]')
        page.select_option("#export-cohort", cohort)
        page.select_option("#export-destination", "managed")
        page.get_by_role("button", name="Start export").click()
        wait_until(
            page,
            "document.querySelector('#export-status').textContent.includes('job')"
            " || !document.querySelector('#export-error').hidden",
        )
        assert page.locator("#export-error").is_hidden(), page.inner_text("#export-error")
        export = job_id_from(page.inner_text("#export-status"))
        portal.shot("10-export-started")
        done = portal.job(export, "SUCCEEDED")
        portal.shot("11-export-finished")
        assert done["status"] == "SUCCEEDED", done

        # The manifest, and one file downloaded through the link the page gets: its SHA-256 is the manifest's.
        page.locator(f'li.job[data-job="{export}"]').get_by_role("button", name=re.compile("Show the manifest")).click()
        page.wait_for_selector("#manifest-table tbody tr[data-path]")
        rows = page.locator("#manifest-table tbody tr[data-path]")
        assert rows.count() == 5
        first = rows.first
        path, sha256 = first.get_attribute("data-path"), first.get_attribute("data-sha256")
        first.get_by_role("button", name=f"Download {path}").click()
        link = first.locator("a.download-link")
        link.wait_for()
        portal.shot("12-export-download")
        body = requests.get(link.get_attribute("href"), timeout=30).content
        assert hashlib.sha256(body).hexdigest() == sha256
        for name in ("manifest.csv", "export.json"):
            page.locator(f'#manifest-downloads button[data-path="{name}"]').click()
            extra = page.locator(f'#manifest-downloads a.download-link[data-path="{name}"]')
            extra.wait_for()
            answer = requests.get(extra.get_attribute("href"), timeout=30)
            assert answer.status_code == 200 and answer.content, name
        assert (
            path
            in requests.get(
                page.locator('#manifest-downloads a.download-link[data-path="manifest.csv"]').get_attribute("href"),
                timeout=30,
            ).text
        )
        # An export of ticked studies, as PNG: the request names the study, not a cohort.
        portal.tab("Search")
        other = sorted(ct)[1]
        page.locator(f'li.study[data-study="{other}"] input.select-study').check()
        assert page.inner_text("#selected-count") == "1"
        page.fill("#export-name", "one study png")
        page.check('input[name="source"][value="selected"]')
        page.uncheck('input[name="formats"][value="dicom"]')
        page.check('input[name="formats"][value="png"]')
        with page.expect_request(lambda r: r.url.endswith("/research/exports") and r.method == "POST") as sent:
            page.get_by_role("button", name="Start export").click()
        assert sent.value.post_data_json["uids"] == [{"study": other}]
        assert sent.value.post_data_json["formats"] == ["png"]
        wait_until(page, "document.querySelector('#export-status').textContent.includes('one study png')")
        selected = job_id_from(page.inner_text("#export-status"))
        done = portal.job(selected, "SUCCEEDED")
        assert done["status"] == "SUCCEEDED", done
        assert set(portal.jobs()) == {cohort, export, selected}
        portal.shot("13-jobs")

        # The tabs answer the arrow keys; every API request carried the bearer token.
        page.get_by_role("tab", name="Cohorts & exports").focus()
        page.keyboard.press("ArrowRight")
        assert page.get_attribute("#tab-me", "aria-selected") == "true"
        assert page.evaluate("document.activeElement.id") == "tab-me"
        assert page.locator("#panel-me").is_visible() and page.locator("#panel-jobs").is_hidden()
        calls = [e for e in browser.log.entries if "/research/" in e.path or "/dicomweb/" in e.path]
        assert calls and {e.authorization for e in calls} == {"Bearer"}
        # The page fetched from the API's origin only; the downloads were navigations to the bucket.
        foreign = browser.log.foreign(api.base_url)
        assert {e.resource_type for e in foreign} == {"document"}, foreign
        assert {e.origin for e in foreign} == {api.endpoint}
        assert_clean(portal)


def test_alice_opens_a_study_from_the_portal_in_ohif_and_it_draws(
    api: LocalResearchApi, modalities: dict[str, set[str]], artifacts: Path, dist: Path
) -> None:
    """The portal's "Open in viewer" link, clicked: a stock OHIF (npm's @ohif/app) opens in a new
    tab on that study, reading the research API as alice (its proxy holds her token, as `deidflow
    local api --ohif` does), and draws her series, the CT she may view and nothing else."""
    from deidflow.local.ohif import OhifServer

    ct = sorted(modalities["CT"])
    server = OhifServer(dist, upstream=api.dicomweb_url, upstream_authorization=f"Bearer {api.token('alice')}")
    with server, OhifBrowser(api.base_url, artifacts=artifacts) as browser:
        api.viewer_url = server.url + "/viewer?StudyInstanceUIDs={study}"
        try:
            portal = Portal(browser, "alice")
            portal.sign_in()
            assert portal.search_qido(ModalitiesInStudy="CT") == set(ct)
            study = ct[0]
            link = portal.page.locator(f'li.study[data-study="{study}"] a.viewer-link')
            assert link.get_attribute("href") == f"{server.url}/viewer?StudyInstanceUIDs={study}"
            portal.shot("10-viewer-link")
            first = len(server.proxied)
            viewer, state = browser.follow_to_viewer(link, study, name="alice-11-ohif-from-portal")
        finally:
            api.viewer_url = VIEWER
        print(f"OHIF from the portal: image drawn {state.seconds:.1f} s after the click; {state.image}")
        assert viewer.url.startswith(server.url + "/viewer") and study in viewer.url
        assert state.image.non_blank(), f"blank viewport: {state.image}; see {state.viewport_screenshot}"
        assert state.series and {s.modality for s in state.series} == {"CT"}
        # What OHIF asked of the API went through its proxy, for that study only, and was answered.
        asked = server.proxied[first:]
        assert asked and {p.status for p in asked} == {200}, [(p.path, p.status) for p in asked]
        assert all(study in p.path for p in asked if "/studies/" in p.path)
        assert browser.page_errors == []


def test_bob_sees_none_of_alices_jobs_and_no_ct(
    api: LocalResearchApi, modalities: dict[str, set[str]], artifacts: Path
) -> None:
    with OhifBrowser(api.base_url, artifacts=artifacts) as browser:
        portal = Portal(browser, "bob")
        portal.sign_in()
        assert set(portal.permissions()) == {"neuro-mr"}
        portal.shot("02-permissions")
        assert portal.jobs() == []
        assert portal.page.locator("#jobs-empty").is_visible()
        portal.shot("03-no-jobs")
        assert portal.search_qido() == modalities["MR"]
        assert portal.search_query("Modality StrEquals CT") == set()
        portal.shot("04-no-ct")
        portal.page.get_by_role("button", name="Sign out").click()
        portal.page.wait_for_selector("#login:not([hidden])")
        assert_clean(portal)


def test_an_auditor_reads_the_audit_trail_of_the_others(api: LocalResearchApi, artifacts: Path) -> None:
    with OhifBrowser(api.base_url, artifacts=artifacts) as browser:
        portal = Portal(browser, "audrey")
        page = portal.page
        portal.sign_in()
        assert portal.permissions() == {}
        assert page.locator("#me-empty").is_visible()
        portal.tab("Audit trail")
        page.get_by_role("button", name="Show records").click()
        wait_until(page, "document.querySelector('#audit-status').textContent.match(/record/)")
        portal.shot("02-audit")
        rows = [
            [c.inner_text() for c in row.query_selector_all("td")] for row in page.query_selector_all("#audit tbody tr")
        ]
        users = {r[1] for r in rows}
        actions = {r[2] for r in rows}
        assert {"alice", "bob"} <= users, users
        assert {"job.export", "export.download"} <= actions, actions
        assert_clean(portal)


COGNITO = "https://portal-test.auth.us-east-1.amazoncognito.com"


def test_cognito_sign_in_is_the_code_flow_with_pkce_and_sign_out_returns_to_the_portal(
    api: LocalResearchApi, artifacts: Path
) -> None:
    """The hosted UI is played by routes: /oauth2/authorize sends the browser back with a code,
    /oauth2/token checks the PKCE verifier against the challenge and answers a real access token."""
    portal_url = api.base_url + "/portal/"
    config = {
        "api": api.base_url,
        "dicomweb": api.dicomweb_url,
        "viewer": None,
        "auth": {
            "mode": "cognito",
            "domain": COGNITO,
            "client_id": "portal-client",
            "redirect_uri": portal_url,
            "scopes": ["openid", "email", "profile"],
        },
    }
    seen: dict[str, Any] = {}

    def hosted_ui(route: Any) -> None:
        request = route.request
        parts = urllib.parse.urlsplit(request.url)
        if parts.path == "/oauth2/authorize":
            query = dict(urllib.parse.parse_qsl(parts.query))
            seen["authorize"] = query
            back = f"{query['redirect_uri']}?code=the-code&state={urllib.parse.quote(query['state'])}"
            route.fulfill(status=302, headers={"Location": back})
        elif parts.path == "/oauth2/token":
            form = dict(urllib.parse.parse_qsl(request.post_data or ""))
            seen["token"] = form
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            good = form.get("code") == "the-code" and challenge == seen["authorize"]["code_challenge"]
            body = {"access_token": api.token("alice"), "token_type": "Bearer"} if good else {"error": "invalid_grant"}
            route.fulfill(
                status=200 if good else 400,
                headers={"Access-Control-Allow-Origin": api.base_url, "Content-Type": "application/json"},
                body=json.dumps(body),
            )
        elif parts.path == "/logout":
            seen["logout"] = dict(urllib.parse.parse_qsl(parts.query))
            route.fulfill(status=302, headers={"Location": seen["logout"]["logout_uri"]})
        else:
            route.fulfill(status=404, body="")

    with OhifBrowser(api.base_url, artifacts=artifacts) as browser:
        portal = Portal(browser, "cognito", csp=CSP.replace("connect-src 'self'", f"connect-src 'self' {COGNITO}"))
        page = portal.page
        page.route(f"{COGNITO}/**", hosted_ui)
        page.route(
            "**/portal/config.json",
            lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(config)),
        )
        page.goto(portal_url)
        page.wait_for_selector("#login-cognito:not([hidden])")
        portal.shot("01-sign-in")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("#app:not([hidden])")
        assert page.inner_text("#whoami-name") == "alice"
        authorize = seen["authorize"]
        assert authorize["response_type"] == "code" and authorize["code_challenge_method"] == "S256"
        assert authorize["client_id"] == "portal-client" and authorize["scope"] == "openid email profile"
        assert seen["token"]["grant_type"] == "authorization_code"
        assert "code=" not in page.url, "the single-use code is off the address bar"
        portal.shot("02-signed-in")
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_selector("#login-cognito:not([hidden])")
        assert seen["logout"] == {"client_id": "portal-client", "logout_uri": portal_url}
        stored = page.evaluate("Object.keys(sessionStorage)")
        assert [k for k in stored if k.startswith("deidflow.portal.")] == [], "no token or verifier left behind"
        assert_clean(portal)
