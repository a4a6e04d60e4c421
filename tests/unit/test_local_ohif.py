"""deidflow.local.ohif without the network: a fake npm, a fake dist, a fake DICOMweb upstream."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from deidflow.local.ohif import (
    NpmMissing,
    OhifServer,
    OhifUnavailable,
    app_config,
    extract_dist,
    ohif_dist,
    sri_digest,
    verify_integrity,
)

# -- the tarball --------------------------------------------------------------------------------------


def make_tarball(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o777  # the archive's mode is not what lands on disk
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


STOCK = {
    "package/package.json": b"{}",
    "package/dist/index.html": b"<html>ohif</html>",
    "package/dist/app.bundle.js": b"console.log(1)",
    "package/dist/assets/logo.svg": b"<svg/>",
}


def test_only_package_dist_is_extracted(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "ohif.tgz", STOCK)
    target = tmp_path / "dist"
    target.mkdir()
    assert extract_dist(tarball, target) == 3
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == [
        "app.bundle.js",
        "assets/logo.svg",
        "index.html",
    ]
    assert (target / "index.html").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    "name", ["package/dist/../../escape.js", "package/dist/a/../../../escape.js", "package/dist//etc/passwd"]
)
def test_a_path_leaving_dist_is_refused(tmp_path: Path, name: str) -> None:
    tarball = make_tarball(tmp_path / "evil.tgz", {**STOCK, name: b"x"})
    target = tmp_path / "dist"
    target.mkdir()
    with pytest.raises(OhifUnavailable, match="unsafe path"):
        extract_dist(tarball, target)
    assert not (tmp_path / "escape.js").exists()


def test_links_are_refused(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "link.tgz", STOCK, links={"package/dist/passwd": "/etc/passwd"})
    target = tmp_path / "dist"
    target.mkdir()
    with pytest.raises(OhifUnavailable, match="link"):
        extract_dist(tarball, target)


def test_integrity_is_the_sri_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.tgz"
    path.write_bytes(b"hello")
    good = sri_digest(path, "sha512")
    verify_integrity(path, good)
    verify_integrity(path, f"sha1-xxxx {good}")  # npm lists several; the strong one decides
    with pytest.raises(OhifUnavailable, match="does not match"):
        verify_integrity(path, "sha512-AAAA")
    with pytest.raises(OhifUnavailable, match="no usable hash"):
        verify_integrity(path, "sha1-abc")


# -- ohif_dist with a fake npm ----------------------------------------------------------------------


def fake_npm(folder: Path, tarball: Path, integrity: str) -> Path:
    """A stand-in for npm: `view` prints the integrity, `pack` copies the tarball into its cwd."""
    calls = folder / "calls.log"
    script = folder / "npm"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{calls}"\n'
        'case "$1" in\n'
        f"  view) echo '{json.dumps(integrity)}' ;;\n"
        f'  pack) cp "{tarball}" ./ohif-app-9.9.9.tgz && '
        f'echo \'[{{"filename": "ohif-app-9.9.9.tgz", "integrity": {json.dumps(integrity)}}}]\' ;;\n'
        "  *) exit 2 ;;\n"
        "esac\n"
    )
    script.chmod(0o755)
    return script


def test_ohif_dist_fetches_verifies_extracts_once(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "src.tgz", STOCK)
    npm = fake_npm(tmp_path, tarball, sri_digest(tarball, "sha512"))
    dist = ohif_dist(tmp_path / "cache", "9.9.9", npm=str(npm))
    assert dist == (tmp_path / "cache" / "9.9.9" / "dist").resolve()
    assert (dist / "index.html").read_bytes() == b"<html>ohif</html>"
    record = json.loads((dist.parent / ".complete.json").read_text())
    assert record["package"] == "@ohif/app@9.9.9" and record["files"] == 3
    assert ohif_dist(tmp_path / "cache", "9.9.9", npm="/nonexistent/npm") == dist  # cached: npm not run
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["view", "pack"]
    assert not list(dist.parent.glob(".pack-*"))  # the scratch folder, tarball included, is gone


def test_ohif_dist_refuses_a_tarball_that_is_not_the_registrys(tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "src.tgz", STOCK)
    other = tmp_path / "other"
    other.write_bytes(b"something else")
    npm = fake_npm(tmp_path, tarball, sri_digest(other, "sha512"))
    with pytest.raises(OhifUnavailable, match="integrity"):
        ohif_dist(tmp_path / "cache", "9.9.9", npm=str(npm))
    assert not (tmp_path / "cache" / "9.9.9" / "dist").exists()


def test_ohif_dist_without_npm_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(NpmMissing, match="apt-get install -y npm"):
        ohif_dist(tmp_path / "cache", "9.9.9")


# -- app_config -----------------------------------------------------------------------------------------


def evaluate_config(js: str) -> dict[str, object]:
    """Run the generated app-config.js in node, as the browser would, and read window.config back."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    program = (
        "const window = {};\n" + js + "\n"
        "const show = (k, v) => (typeof v === 'function' ? 'function:' + v.toString() : v);\n"
        "process.stdout.write(JSON.stringify(window.config, show));\n"
    )
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, check=True, timeout=30)
    result = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_app_config_points_the_one_data_source_at_the_root() -> None:
    config = evaluate_config(app_config("http://127.0.0.1:8080/dicomweb/"))
    assert config["defaultDataSourceName"] == "deidflow"
    assert config["showStudyList"] is True
    assert config["extensions"] == [] and config["modes"] == []
    [source] = config["dataSources"]  # type: ignore[misc]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert source["sourceName"] == "deidflow"
    settings = source["configuration"]
    assert settings["qidoRoot"] == settings["wadoRoot"] == "http://127.0.0.1:8080/dicomweb"
    assert settings["imageRendering"] == settings["thumbnailRendering"] == "wadors"
    assert settings["enableStudyLazyLoad"] is True
    assert settings["supportsFuzzyMatching"] is False
    assert settings["supportsWildcard"] is True
    assert settings["qidoSupportsIncludeField"] is True
    assert settings["singlepart"] == "bulkdata,video,pdf"
    assert settings["bulkDataURI"] == {"enabled": True, "relativeResolution": "series"}
    assert "cloudfront" not in json.dumps(config)  # the stock demo server is gone


def test_a_bearer_token_becomes_the_authorization_header_of_ohifs_auth_service() -> None:
    js = app_config("/dicomweb", bearer_token="abc.def.ghi")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    # Play OHIF's part: register the extension as its ExtensionManager does, then ask the service.
    program = (
        "const window = {};\n" + js + "\n"
        "let impl = null;\n"
        "const servicesManager = { services: { userAuthenticationService: {\n"
        "  setServiceImplementation: i => { impl = i; } } } };\n"
        "const [extension] = window.config.extensions;\n"
        "extension.preRegistration({ servicesManager });\n"
        "process.stdout.write(JSON.stringify({ id: extension.id, header: impl.getAuthorizationHeader() }));\n"
    )
    done = subprocess.run([node, "-e", program], capture_output=True, text=True, check=True, timeout=30)
    assert json.loads(done.stdout) == {
        "id": "deidflow-bearer-token",
        "header": {"Authorization": "Bearer abc.def.ghi"},
    }


def test_a_token_cannot_break_out_of_the_generated_script() -> None:
    config = evaluate_config(app_config("/dicomweb", bearer_token="x'}); alert(1); ({'"))
    assert "alert(1)" in json.dumps(config["extensions"])  # still only a string inside the header


# -- OhifServer -------------------------------------------------------------------------------------------


class Upstream:
    """A stand-in DICOMweb server that records what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                headers = self.headers
                outer.seen.append((self.command, self.path, headers.get("Authorization"), headers.get("Accept")))
                if self.path.startswith("/root/missing"):
                    self.send_response(404)
                    body = b"no such study"
                else:
                    self.send_response(200)
                    bulk = f"{outer.root}/studies/1.2.3/series/4/instances/5/bulk/7fe00010"
                    body = json.dumps(
                        [{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "7FE00010": {"vr": "OB", "BulkDataURI": bulk}}]
                    ).encode()
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/root"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_dist(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<html>ohif</html>")
    (dist / "app.bundle.js").write_text("console.log(1)")
    (dist / "codec.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside dist")
    return dist


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_server_serves_the_dist_the_config_and_the_spa_routes(fake_dist: Path) -> None:
    with OhifServer(fake_dist) as viewer:
        assert viewer.url.startswith("http://127.0.0.1:")
        status, headers, body = get(viewer.url + "/app-config.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert viewer.dicomweb_root.encode() in body  # the default config points at the proxy
        assert get(viewer.url + "/codec.wasm")[1]["Content-Type"] == "application/wasm"
        for route in ("/", "/viewer?StudyInstanceUIDs=1.2.3", "/viewer/dicomweb", "/local"):
            status, headers, body = get(viewer.url + route)
            assert (status, body) == (200, b"<html>ohif</html>"), route
        assert get(viewer.url + "/missing.bundle.js")[0] == 404
        assert get(viewer.url + "/../secret.txt")[2] != b"outside dist"
        assert get(viewer.url + "/%2e%2e/secret.txt")[2] != b"outside dist"
        assert get(viewer.url + "/dicomweb/studies")[2] == b"<html>ohif</html>"  # no upstream: no proxy
    with pytest.raises(RuntimeError, match="not running"):
        _ = viewer.url


def test_the_proxy_forwards_to_the_upstream_root_with_its_credentials(fake_dist: Path, upstream: Upstream) -> None:
    with OhifServer(fake_dist, upstream=upstream.root, upstream_authorization="Basic dXNlcjpwdw==") as viewer:
        status, headers, body = get(
            viewer.dicomweb_root + "/studies?limit=101&PatientName=A*",
            {"Authorization": "Bearer from-the-browser", "Accept": "application/dicom+json", "Cookie": "c=1"},
        )
        assert (status, headers["Content-Type"]) == (200, "application/dicom+json")
        assert json.loads(body)[0]["0020000D"]["Value"] == ["1.2.3"]
        # The upstream's own absolute URLs point back through the proxy.
        bulk = json.loads(body)[0]["7FE00010"]["BulkDataURI"]
        assert bulk == viewer.dicomweb_root + "/studies/1.2.3/series/4/instances/5/bulk/7fe00010"
        assert get(viewer.dicomweb_root + "/missing/study")[0] == 404
    assert upstream.seen == [
        ("GET", "/root/studies?limit=101&PatientName=A*", "Basic dXNlcjpwdw==", "application/dicom+json"),
        ("GET", "/root/missing/study", "Basic dXNlcjpwdw==", None),
    ]
    assert [(p.path, p.status, p.authorization) for p in viewer.proxied] == [
        ("/dicomweb/studies?limit=101&PatientName=A*", 200, "Bearer"),
        ("/dicomweb/missing/study", 404, None),
    ]


def test_without_upstream_credentials_the_browsers_header_goes_through(fake_dist: Path, upstream: Upstream) -> None:
    with OhifServer(fake_dist, upstream=upstream.root) as viewer:
        get(viewer.dicomweb_root + "/studies", {"Authorization": "Bearer t0k"})
    assert upstream.seen[0][2] == "Bearer t0k"


def test_an_unreachable_upstream_is_a_502(fake_dist: Path, upstream: Upstream) -> None:
    root = upstream.root
    upstream.close()
    with OhifServer(fake_dist, upstream=root) as viewer:
        assert get(viewer.dicomweb_root + "/studies")[0] == 502
        assert viewer.proxied[0].status == 502
