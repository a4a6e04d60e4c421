"""Headless Debian Chromium driving a stock OHIF viewer (Playwright's sync API, no browser download).

    with OhifBrowser(viewer.url, artifacts=folder) as browser:
        rows = browser.open_study_list()            # what the study list shows
        view = browser.open_viewer(study_uid)       # waits for a drawn image, screenshots it
        browser.log.dicomweb(viewer.dicomweb_root)  # every request the page made, with its status

One browser (and one fresh profile) per OhifBrowser: tests share it across a module. `extra_headers`
go on every request the page makes (Playwright's extra_http_headers), for servers that want a
header OHIF is not configured to send.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = Path(os.environ.get("DEIDFLOW_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium's own connections (updates, sync, field trials)
# are refused on a closed network, slowly; QUIC and the GPU are of no use headless.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
VIEWPORT = {"width": 1280, "height": 800}
# What a returning user has already dismissed: the investigational-use banner (per session) and the
# viewer's first-visit tour (OHIF keeps both in web storage). They would cover the viewport.
_RETURNING_USER = """
try {
  sessionStorage.setItem('investigationalUseDialog', 'hidden');
  localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
} catch (e) {}
"""

_CANVAS_ONLY = """
[data-cy='viewport-pane'] * { visibility: hidden !important; }
[data-cy='viewport-pane'] canvas.cornerstone-canvas { visibility: visible !important; }
"""


@dataclass
class LoggedRequest:
    """One request the page made: its URL and, once known, the answer's status (None: no answer)."""

    method: str
    url: str
    resource_type: str
    authorization: str | None  # the scheme only ("Bearer"), never the credential
    status: int | None = None
    failure: str | None = None

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    @property
    def origin(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"


def dicomweb_kind(path: str) -> str:
    """What a DICOMweb path asks for: studies, series, instances, metadata, frames, bulkdata, rendered, thumbnail."""
    parts = [p for p in path.split("/") if p]
    if "studies" not in parts:
        return "other"
    tail = parts[parts.index("studies") :]
    last = tail[-1]
    if last in ("metadata", "rendered", "thumbnail"):
        return last
    if "frames" in tail:
        return "frames"
    if "bulk" in tail or "bulkdata" in tail:
        return "bulkdata"
    if last in ("studies", "series", "instances"):
        return last  # a QIDO search at that level
    return "retrieve"


def dicomweb_sequence(entries: list[LoggedRequest]) -> list[str]:
    """The kinds of the requests in order, consecutive repeats collapsed."""
    sequence: list[str] = []
    for entry in entries:
        kind = dicomweb_kind(entry.path)
        if not sequence or sequence[-1] != kind:
            sequence.append(kind)
    return sequence


def in_viewer_order(kinds: list[str]) -> bool:
    """A viewer's way through DICOMweb: QIDO for the study and its series, in either order (OHIF
    sends the two at once, so they arrive in either), then the metadata, then frames."""
    if "metadata" not in kinds:
        return False
    first_metadata = kinds.index("metadata")
    return {"studies", "series"} <= set(kinds[:first_metadata]) and "frames" in kinds[first_metadata:]


@dataclass
class RequestLog:
    entries: list[LoggedRequest] = field(default_factory=list)

    def dicomweb(self, root: str) -> list[LoggedRequest]:
        """The requests under a DICOMweb root (absolute URL), in the order the page made them."""
        prefix = root.rstrip("/") + "/"
        return [e for e in self.entries if e.url.startswith(prefix)]

    def kinds(self, root: str) -> list[str]:
        """The DICOMweb sequence, consecutive repeats collapsed: e.g. studies, series, metadata, frames."""
        return dicomweb_sequence(self.dicomweb(root))

    def foreign(self, *origins: str) -> list[LoggedRequest]:
        """Requests to anywhere but the given origins (data: and blob: URLs never leave the page)."""
        allowed = {o.rstrip("/") for o in origins}
        network = ("http", "https", "ws", "wss")
        return [e for e in self.entries if e.url.split(":", 1)[0] in network and e.origin not in allowed]

    def unanswered(self) -> list[LoggedRequest]:
        return [e for e in self.entries if e.status is None]


@dataclass(frozen=True)
class StudyRow:
    """One row of OHIF's study list, as shown (names are DICOM PN rendered "Family, Given")."""

    patient: str
    date: str
    modalities: str
    description: str
    instances: str


@dataclass(frozen=True)
class SeriesThumbnail:
    description: str
    modality: str
    text: str  # the whole label, e.g. "AXIAL … S:1 3"


@dataclass(frozen=True)
class ImageStats:
    """The viewport canvas's pixels, as a screenshot shows them."""

    width: int
    height: int
    grey_levels: int  # distinct luminance values
    stddev: float  # of the luminance

    def non_blank(self, *, min_levels: int = 16, min_stddev: float = 8.0) -> bool:
        return self.grey_levels >= min_levels and self.stddev >= min_stddev


@dataclass(frozen=True)
class ViewerState:
    study_uid: str
    screenshot: Path  # the whole page
    viewport_screenshot: Path  # the viewport canvas only
    image: ImageStats
    series: list[SeriesThumbnail]
    seconds: float  # from navigation to a drawn image


def image_stats(png: Path) -> ImageStats:
    from PIL import Image, ImageStat

    with Image.open(png) as picture:
        grey = picture.convert("L")
        histogram = grey.histogram()
        return ImageStats(
            width=grey.width,
            height=grey.height,
            grey_levels=sum(1 for count in histogram if count),
            stddev=float(ImageStat.Stat(grey).stddev[0]),
        )


class OhifBrowser:
    """Chromium (headless, fresh profile) on one OHIF page; a context manager that always closes it."""

    def __init__(
        self,
        base_url: str,
        *,
        artifacts: str | os.PathLike[str],
        executable: str | os.PathLike[str] = CHROMIUM,
        extra_headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ):
        self.base_url = base_url.rstrip("/")
        self.artifacts = Path(artifacts)
        self.executable = Path(executable)
        self.extra_headers = dict(extra_headers or {})
        self.timeout_ms = timeout * 1000
        self.log = RequestLog()
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []  # uncaught exceptions in the page
        self.search_status: int | None = None  # the study list's QIDO answer, last time it was opened
        self._playwright: Any = None
        self._context: Any = None
        self._page: Any = None
        self._profile: Path | None = None
        self._pending: dict[int, LoggedRequest] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> OhifBrowser:
        from playwright.sync_api import sync_playwright

        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._profile = Path(tempfile.mkdtemp(prefix="ohif-chromium-"))
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                str(self._profile),
                executable_path=str(self.executable),
                headless=True,
                args=list(CHROMIUM_ARGS),
                viewport=VIEWPORT,
                service_workers="block",  # OHIF's service worker would hide requests from the log
                extra_http_headers=self.extra_headers or None,
            )
            self._context.add_init_script(_RETURNING_USER)
            self._context.set_default_timeout(self.timeout_ms)
            self._context.on("request", self._on_request)
            self._context.on("response", self._on_response)
            self._context.on("requestfailed", self._on_failed)
            self._page = self._context.pages[0] if self._context.pages else self._context.new_page()
            self._page.on("console", self._on_console)
            self._page.on("pageerror", self._on_page_error)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        context, self._context = self._context, None
        playwright, self._playwright = self._playwright, None
        try:
            if context is not None:
                context.close()
        finally:
            if playwright is not None:
                playwright.stop()
            if self._profile is not None:
                shutil.rmtree(self._profile, ignore_errors=True)
                self._profile = None

    @property
    def page(self) -> Any:
        """The Playwright Page, for what the helpers below do not cover."""
        return self._page

    # -- the request log ---------------------------------------------------------------------------

    def _on_request(self, request: Any) -> None:
        authorization = request.headers.get("authorization")
        entry = LoggedRequest(
            request.method,
            request.url,
            request.resource_type,
            authorization.split(" ", 1)[0] if authorization else None,
        )
        self.log.entries.append(entry)
        self._pending[id(request)] = entry

    def _on_response(self, response: Any) -> None:
        entry = self._pending.pop(id(response.request), None)
        if entry is not None:
            entry.status = response.status

    def _on_failed(self, request: Any) -> None:
        entry = self._pending.pop(id(request), None)
        if entry is not None:
            entry.failure = str(request.failure)

    def _on_console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append(message.text[:500])

    def _on_page_error(self, error: Any) -> None:
        self.page_errors.append(str(error)[:500])

    # -- pages ---------------------------------------------------------------------------------------

    def screenshot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self._page.screenshot(path=str(path))
        print(f"ohif screenshot: {path}")
        return path

    def open_study_list(self, *, expect_rows: int | None = None) -> tuple[list[StudyRow], list[str]]:
        """Open `/`, wait for the QIDO search and the rows; return the rows and the StudyInstanceUIDs the
        search answered (the list shows no UIDs: they come from the response the rows were made of)."""
        page = self._page
        with page.expect_response(lambda r: urllib.parse.urlsplit(r.url).path.endswith("/studies")) as answer:
            page.goto(self.base_url + "/")
        response = answer.value
        self.search_status = response.status
        # An error answer (a 403's {"error": …}) lists no study.
        found = json.loads(response.body() or b"[]") if response.status == 200 else []
        uids = [str(study["0020000D"]["Value"][0]) for study in found]
        rows_selector = "tbody tr[aria-selected]"
        if expect_rows is None or expect_rows > 0:
            page.wait_for_selector(rows_selector)
        if expect_rows is not None:
            page.wait_for_function(f"document.querySelectorAll({json.dumps(rows_selector)}).length >= {expect_rows}")
        rows = []
        for row in page.query_selector_all(rows_selector):
            cells = [c.inner_text().strip() for c in row.query_selector_all("td")]
            cells += [""] * (5 - len(cells))
            rows.append(StudyRow(*cells[:5]))
        self.screenshot("study-list")
        return rows, uids

    def open_viewer(
        self, study_uid: str, *, name: str | None = None, min_levels: int = 16, min_stddev: float = 8.0
    ) -> ViewerState:
        """Open `/viewer?StudyInstanceUIDs=<uid>` and wait until the viewport canvas shows an image."""
        started = time.monotonic()
        self._page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={urllib.parse.quote(study_uid)}")
        page = self._page
        return self.viewer_state(page, study_uid, started, name=name, min_levels=min_levels, min_stddev=min_stddev)

    def follow_to_viewer(
        self, link: Any, study_uid: str, *, name: str | None = None, min_levels: int = 16, min_stddev: float = 8.0
    ) -> tuple[Any, ViewerState]:
        """Click a link that opens the viewer in a new tab (target=_blank, as another site's link
        does); wait for the image there. The new tab's page, and what it shows."""
        started = time.monotonic()
        with self._context.expect_page() as opened:
            link.click()
        page = opened.value
        page.on("console", self._on_console)
        page.on("pageerror", self._on_page_error)
        page.wait_for_load_state()
        state = self.viewer_state(page, study_uid, started, name=name, min_levels=min_levels, min_stddev=min_stddev)
        return page, state

    def viewer_state(
        self,
        page: Any,
        study_uid: str,
        started: float,
        *,
        name: str | None = None,
        min_levels: int = 16,
        min_stddev: float = 8.0,
    ) -> ViewerState:
        """Wait until OHIF's viewport canvas on `page` shows an image; screenshots and the series panel."""
        name = name or f"viewer-{study_uid[-12:]}"
        canvas = page.wait_for_selector("[data-cy='viewport-pane'] canvas.cornerstone-canvas", state="visible")
        viewport_png = self.artifacts / f"{name}-viewport.png"
        deadline = started + self.timeout_ms / 1000
        # The viewport's text overlays (date, orientation, W/L) would count as drawn pixels: they are
        # hidden while the canvas is measured, so only the rendered image decides.
        style = page.add_style_tag(content=_CANVAS_ONLY)
        try:
            while True:  # the canvas exists before its image is drawn: poll its pixels
                canvas.screenshot(path=str(viewport_png))
                stats = image_stats(viewport_png)
                if stats.non_blank(min_levels=min_levels, min_stddev=min_stddev) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(250)
        finally:
            style.evaluate("element => element.remove()")
        seconds = time.monotonic() - started
        page.wait_for_selector("[data-cy='study-browser-thumbnail']")
        series = [
            SeriesThumbnail(
                description=_text(thumb, "[data-cy='series-description-label']"),
                modality=_text(thumb, "[data-cy='series-modality-label']"),
                text=" ".join(thumb.inner_text().split()),
            )
            for thumb in page.query_selector_all("[data-cy='study-browser-thumbnail']")
        ]
        shot = self.artifacts / f"{name}.png"
        page.screenshot(path=str(shot))
        print(f"ohif screenshot: {shot}; viewport: {viewport_png} ({stats})")
        return ViewerState(study_uid, shot, viewport_png, stats, series, seconds)

    def wait_for_quiet(self, seconds: float = 0.5) -> None:
        """Wait until no request of the page is unanswered for `seconds` (prefetches finishing)."""
        deadline = time.monotonic() + self.timeout_ms / 1000
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if self._pending:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= seconds:
                return
            self._page.wait_for_timeout(100)


def _text(element: Any, selector: str) -> str:
    found = element.query_selector(selector)
    return found.inner_text().strip() if found else ""
