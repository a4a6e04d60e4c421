"""A stock OHIF viewer served on loopback, for looking at a DICOMweb server (Orthanc, or the research API).

OHIF is not built here: the npm package `@ohif/app` ships a prebuilt `dist/` (a static web app),
fetched once with `npm pack` into a cache folder, checked against the registry's integrity and
extracted. `OhifServer` serves it with a generated `app-config.js` and, on the same origin, proxies
`/dicomweb/*` to the real DICOMweb root, so the browser needs no CORS and never holds the
upstream's credentials (the proxy adds them).

    dist = ohif_dist(Path(".cache/ohif"))
    with OhifServer(dist, upstream=orthanc.dicomweb_url, upstream_authorization="Basic …") as viewer:
        print(viewer.url + "/viewer?StudyInstanceUIDs=" + uid)

How a bearer token can reach the DICOMweb server (OHIF 3.13, no OIDC):
  * the proxy adds it (`upstream_authorization="Bearer …"`): the browser never sees it;
  * or OHIF sends it itself: `app_config(..., bearer_token=…)` registers a tiny inline extension whose
    `preRegistration` hook sets `userAuthenticationService`'s `getAuthorizationHeader`, the one place
    OHIF's DICOMweb data source reads its `Authorization` from (QIDO, WADO metadata and the image
    loader's frames alike). The data source configuration itself has no header option for them
    (`requestOptions.auth` is read only by a few legacy helpers). OHIF also takes `?token=` on the
    viewer route (not the study list), which puts the token in a URL: not used here.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import TracebackType

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
LOOPBACK = "127.0.0.1"
PROXY_PREFIX = "/dicomweb"
_DIST_PREFIX = "package/dist/"
_COMPLETE = ".complete.json"  # written last: its presence means the dist folder is whole
NPM_HINT = "install Node.js and npm (Debian: sudo apt-get install -y npm)"


class OhifUnavailable(RuntimeError):
    """OHIF's dist could not be fetched (npm missing, registry unreachable, integrity mismatch)."""


class NpmMissing(OhifUnavailable):
    """npm is not installed, and the dist is not in the cache yet."""


# -- fetching the prebuilt viewer -------------------------------------------------------------------


def _npm(npm: str, *args: str, cwd: Path | None = None, timeout: float = 300.0) -> str:
    try:
        done = subprocess.run(
            [npm, *args, "--json", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OhifUnavailable(f"npm {args[0]} failed: {exc}") from exc
    if done.returncode != 0:
        raise OhifUnavailable(f"npm {' '.join(args)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return done.stdout


def sri_digest(path: Path, algorithm: str) -> str:
    """The Subresource Integrity string (`sha512-<base64>`) of a file, as npm's `dist.integrity` has it."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"{algorithm}-{base64.b64encode(digest.digest()).decode('ascii')}"


def verify_integrity(path: Path, integrity: str) -> None:
    """Raise OhifUnavailable unless the file matches one of the SRI hashes (space-separated, npm style)."""
    accepted = [entry for entry in integrity.split() if entry.split("-", 1)[0] in ("sha512", "sha384", "sha256")]
    if not accepted:
        raise OhifUnavailable(f"no usable hash in the registry's integrity {integrity!r}")
    for entry in accepted:
        if sri_digest(path, entry.split("-", 1)[0]) == entry:
            return
    raise OhifUnavailable(f"{path.name} does not match the registry's integrity {accepted[0][:20]}…: not extracted")


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The path under dist/ of a tarball member, or None for members outside package/dist/.

    Raises OhifUnavailable for names that could land outside the target (absolute, `..`)."""
    if not name.startswith(_DIST_PREFIX):
        return None
    relative = PurePosixPath(name[len(_DIST_PREFIX) :])
    if name.startswith("/") or relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise OhifUnavailable(f"unsafe path in the OHIF tarball: {name!r}")
    return relative


def extract_dist(tarball: Path, target: Path) -> int:
    """Write package/dist/* of the tarball into `target` (regular files and folders only); return the count.

    Links, devices and anything outside package/dist/ are never written: each file is copied out of
    the archive by hand rather than by tarfile's extract, so the archive decides no path and no mode."""
    count = 0
    root = target.resolve()
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive:
            relative = _safe_member_path(member.name)
            if relative is None or not relative.parts:
                continue
            destination = (root / relative).resolve()
            if root not in destination.parents:
                raise OhifUnavailable(f"unsafe path in the OHIF tarball: {member.name!r}")
            if member.isdir():
                destination.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                with source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                os.chmod(destination, 0o644)
                count += 1
            else:
                raise OhifUnavailable(f"the OHIF tarball holds a link or special file: {member.name!r}")
    return count


def ohif_dist(cache_dir: str | os.PathLike[str], version: str = OHIF_VERSION, *, npm: str | None = None) -> Path:
    """The prebuilt `dist/` of `@ohif/app@<version>`, fetched into `<cache_dir>/<version>/dist` once.

    `npm view` gives the registry's `dist.integrity`; `npm pack` downloads the tarball, which is
    hashed here and compared to it before anything is extracted. Later calls find the folder (and
    its `.complete.json`) and touch no network. Concurrent callers wait on a lock file.
    """
    folder = Path(cache_dir).resolve() / version
    dist = folder / "dist"
    if (folder / _COMPLETE).is_file() and (dist / "index.html").is_file():
        return dist
    npm = npm or shutil.which("npm")
    if not npm:
        raise NpmMissing(f"npm not found: fetching OHIF needs it; {NPM_HINT}")
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (folder / _COMPLETE).is_file() and (dist / "index.html").is_file():
            return dist  # another process finished while this one waited
        spec = f"{OHIF_PACKAGE}@{version}"
        integrity = json.loads(_npm(npm, "view", spec, "dist.integrity"))
        if not isinstance(integrity, str):
            raise OhifUnavailable(f"npm view {spec} dist.integrity gave {integrity!r}")
        with tempfile.TemporaryDirectory(dir=folder, prefix=".pack-") as scratch:
            packed = json.loads(_npm(npm, "pack", spec, "--pack-destination", ".", cwd=Path(scratch)))
            entry = packed[0] if isinstance(packed, list) and packed else {}
            if entry.get("integrity") not in (None, integrity):
                raise OhifUnavailable(f"npm pack and npm view disagree about {spec}'s integrity")
            tarball = Path(scratch) / str(entry.get("filename", ""))
            if not tarball.is_file():
                raise OhifUnavailable(f"npm pack {spec} wrote no tarball where expected ({tarball.name})")
            verify_integrity(tarball, integrity)
            staging = Path(scratch) / "dist"
            staging.mkdir()
            files = extract_dist(tarball, staging)
            if not (staging / "index.html").is_file():
                raise OhifUnavailable(f"{spec} has no dist/index.html: not the prebuilt viewer")
            if dist.exists():
                shutil.rmtree(dist)  # a half-written folder from an interrupted run
            staging.rename(dist)
        (folder / _COMPLETE).write_text(
            json.dumps({"package": spec, "integrity": integrity, "files": files}, indent=2) + "\n", "utf-8"
        )
    return dist


# -- the configuration ------------------------------------------------------------------------------


def _bearer_extension(token: str) -> str:
    """An inline OHIF extension: its preRegistration runs at boot, before any data source starts."""
    header = json.dumps({"Authorization": f"Bearer {token}"})
    return (
        "{\n"
        "      id: 'deidflow-bearer-token',\n"
        "      preRegistration({ servicesManager }) {\n"
        "        servicesManager.services.userAuthenticationService.setServiceImplementation({\n"
        f"          getAuthorizationHeader: () => ({header}),\n"
        "        });\n"
        "      },\n"
        "    }"
    )


def app_config(
    dicomweb_root: str,
    *,
    name: str = "deidflow",
    friendly_name: str = "deidflow DICOMweb",
    bearer_token: str | None = None,
    show_study_list: bool = True,
    max_web_workers: int = 3,
) -> str:
    """OHIF's `app-config.js`: the stock default (dist/app-config.js of 3.13) with one DICOMweb data
    source whose QIDO and WADO roots are `dicomweb_root` (absolute, or same-origin like `/dicomweb`).

    The stock file points at OHIF's public demo server; nothing here reaches beyond `dicomweb_root`.
    `bearer_token` makes OHIF send `Authorization: Bearer <token>` on every DICOMweb request (see the
    module docstring); it is then readable by whoever can read app-config.js, so prefer the proxy.
    """
    root = dicomweb_root.rstrip("/")
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": name,
        "configuration": {
            "friendlyName": friendly_name,
            "name": name,
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": True,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video,pdf",
            "bulkDataURI": {"enabled": True, "relativeResolution": "series"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    settings = {
        "name": name,
        "routerBasename": None,
        "modes": [],
        "customizationService": {},
        "showStudyList": show_study_list,
        "maxNumberOfWebWorkers": max_web_workers,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "experimentalStudyBrowserSort": False,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "allowMultiSelectExport": False,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "always",
        "defaultDataSourceName": name,
        "dataSources": [source],
    }
    body = ",\n".join(f"  {key}: {json.dumps(value, indent=2)}" for key, value in settings.items())
    extensions = f"[\n    {_bearer_extension(bearer_token)},\n  ]" if bearer_token else "[]"
    return (
        "/** @type {AppTypes.Config} */\n"
        "// Generated by deidflow.local.ohif.app_config (from OHIF 3.13's dist/app-config.js).\n"
        "window.config = {\n"
        f"{body},\n"
        f"  extensions: {extensions},\n"
        "  httpErrorHandler: error => {\n"
        "    console.warn('DICOMweb request failed', error && error.status);\n"
        "  },\n"
        "};\n"
    )


# -- the server -------------------------------------------------------------------------------------

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".xml": "application/xml",
}
# Request headers worth passing upstream; hop-by-hop ones and the browser's cookies are not.
_FORWARD_REQUEST = ("accept", "authorization", "content-type", "range", "if-none-match", "if-modified-since")
_FORWARD_RESPONSE = ("content-type", "content-encoding", "etag", "last-modified", "cache-control", "content-range")


@dataclass(frozen=True)
class ProxiedRequest:
    """One request the proxy handled: what the browser asked for and what upstream answered."""

    method: str
    path: str  # as the browser asked for it, under /dicomweb
    status: int
    authorization: str | None  # the scheme the browser sent ("Bearer", "Basic"), never the credential


class OhifServer:
    """The OHIF dist plus a generated app-config.js on http://127.0.0.1:<port> (a free one by default), in a thread.

    Unknown paths without a file extension answer index.html (OHIF's routes: /viewer?…); with
    `upstream`, `/dicomweb/<rest>` is proxied to `<upstream>/<rest>`, adding `upstream_authorization`
    as the Authorization header when given (else the browser's own header, if any, is passed on);
    in JSON answers the upstream root is rewritten to the proxy's (absolute BulkDataURIs).
    `config` is the app-config.js text, or a function of this server's own DICOMweb root (the proxy's
    absolute URL) returning it; the default is `app_config(<that root>)`.
    """

    def __init__(
        self,
        dist: str | os.PathLike[str],
        *,
        upstream: str | None = None,
        upstream_authorization: str | None = None,
        config: str | Callable[[str], str] | None = None,
        timeout: float = 60.0,
        port: int = 0,
    ):
        self.dist = Path(dist).resolve()
        if not (self.dist / "index.html").is_file():
            raise OhifUnavailable(f"{self.dist} is not an OHIF dist folder (no index.html)")
        self.upstream = upstream.rstrip("/") if upstream else None
        self.upstream_authorization = upstream_authorization
        self._config = config
        self.timeout = timeout
        self.port = port  # on 127.0.0.1; 0: a free one
        self.config_js = ""
        self.proxied: list[ProxiedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the OHIF server is not running")
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    @property
    def dicomweb_root(self) -> str:
        """The DICOMweb root the viewer is configured with: the same-origin proxy."""
        return self.url + PROXY_PREFIX

    def __enter__(self) -> OhifServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._server = ThreadingHTTPServer((LOOPBACK, self.port), _handler_for(self))
        self._server.daemon_threads = True
        config = self._config
        if config is None:
            self.config_js = app_config(self.dicomweb_root)
        elif callable(config):
            self.config_js = config(self.dicomweb_root)
        else:
            self.config_js = config
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def record(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self.proxied.append(entry)

    def static_file(self, url_path: str) -> Path | None:
        """The file under dist/ that a URL path names, or None (never a path outside dist/)."""
        clean = posixpath.normpath(urllib.parse.unquote(url_path)).lstrip("/")
        if not clean or clean == "." or clean.startswith(".."):
            return None
        candidate = (self.dist / clean).resolve()
        if self.dist not in candidate.parents or not candidate.is_file():
            return None
        return candidate


def _handler_for(server: OhifServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "deidflow-ohif"

        def log_message(self, format: str, *args: object) -> None:
            pass  # URLs carry study UIDs; the request log is the caller's (server.proxied, the browser)

        def do_GET(self) -> None:
            self._dispatch(head=False)

        def do_HEAD(self) -> None:
            self._dispatch(head=True)

        def do_POST(self) -> None:
            if self._is_proxied():
                self._proxy()
            else:
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"", "text/plain", head=False)

        def _is_proxied(self) -> bool:
            path = urllib.parse.urlsplit(self.path).path
            return server.upstream is not None and (path == PROXY_PREFIX or path.startswith(PROXY_PREFIX + "/"))

        def _dispatch(self, *, head: bool) -> None:
            if self._is_proxied():
                self._proxy()
                return
            path = urllib.parse.urlsplit(self.path).path
            if path == "/app-config.js":
                self._send(HTTPStatus.OK, server.config_js.encode("utf-8"), _CONTENT_TYPES[".js"], head=head)
                return
            file = server.static_file(path)
            if file is None:
                if PurePosixPath(path).suffix:  # a missing asset is a 404, not the app's HTML
                    self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain", head=head)
                    return
                file = server.dist / "index.html"  # the single-page app's routes
            content_type = _CONTENT_TYPES.get(file.suffix.lower(), "application/octet-stream")
            self._send(HTTPStatus.OK, file.read_bytes(), content_type, head=head)

        def _send(self, status: int, body: bytes, content_type: str, *, head: bool) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            # Cross-origin isolation: OHIF's volume viewports use SharedArrayBuffer when it exists.
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _proxy(self) -> None:
            assert server.upstream is not None
            parts = urllib.parse.urlsplit(self.path)
            rest = parts.path[len(PROXY_PREFIX) :]
            target = server.upstream + rest + (f"?{parts.query}" if parts.query else "")
            length = int(self.headers.get("Content-Length") or 0)
            data = self.rfile.read(length) if length else None
            request = urllib.request.Request(target, data=data, method=self.command)
            for name in _FORWARD_REQUEST:
                value = self.headers.get(name)
                if value is not None:
                    request.add_header(name.title(), value)
            received = self.headers.get("Authorization")
            if server.upstream_authorization:
                request.add_header("Authorization", server.upstream_authorization)
            try:
                response = urllib.request.urlopen(request, timeout=server.timeout)
            except urllib.error.HTTPError as exc:
                response = exc
            except (OSError, ValueError) as exc:
                server.record(ProxiedRequest(self.command, self.path, HTTPStatus.BAD_GATEWAY, _scheme(received)))
                self._send(HTTPStatus.BAD_GATEWAY, f"upstream unreachable: {exc}\n".encode(), "text/plain", head=False)
                return
            with response:
                body = response.read()
                content_type = response.headers.get("Content-Type") or ""
                if "json" in content_type and "content-encoding" not in response.headers:
                    # As a reverse proxy does with Location: URLs the upstream builds from its own
                    # root (Orthanc's BulkDataURIs) would send the browser past the proxy.
                    body = body.replace(server.upstream.encode(), server.dicomweb_root.encode())
                status = response.status if hasattr(response, "status") else response.code
                server.record(ProxiedRequest(self.command, self.path, status, _scheme(received)))
                self.send_response(status)
                for name in _FORWARD_RESPONSE:
                    value = response.headers.get(name)
                    if value is not None:
                        self.send_header(name.title(), value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

    return Handler


def _scheme(authorization: str | None) -> str | None:
    return authorization.split(" ", 1)[0] if authorization else None
