"""A real Orthanc on loopback as the local DICOMweb / DICOM front door, feeding the drop folder.

In the cloud, Orthanc stores each received instance in the ingest bucket under `orthanc/` (S3
object-storage plugin). Locally, Debian's Orthanc runs with a small Python plugin
(deidflow/data/orthanc_forward_to_drop.py) that writes each stored instance atomically to
`<drop>/orthanc/<orthanc instance id>.dcm` and then deletes it from Orthanc. Everything here is
AWS-free; see docs/orthanc-local.md for what differs from the cloud and why.

    with LocalOrthanc(state_dir, drop_dir) as server:
        stow_rs(server.url, server.credentials, files)
        c_store("127.0.0.1", server.dicom_port, server.aet, files, calling_aet=server.calling_aet)
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType

from pydicom import dcmread

APT_PACKAGES = "orthanc orthanc-dicomweb orthanc-python"
APT_HINT = f"install them with: sudo apt-get install -y {APT_PACKAGES}"
LOOPBACK = "127.0.0.1"
PLUGIN_FILE = "orthanc_forward_to_drop.py"
HTTP_FILTER_FILE = "orthanc_http_filter.lua"  # who may do what over HTTP: senders store, nothing more
DROP_SUBFOLDER = "orthanc"  # mirrors the `orthanc/` prefix the cloud Orthanc writes in the ingest bucket
DICOMWEB_ROOT = "/dicom-web/"
DEFAULT_AET = "DEIDFLOW"
DEFAULT_CALLING_AET = "DEIDFLOW_SCU"
USER = "deidflow"  # the sending system's user: store only (POST /instances, STOW-RS)
MONITOR_USER = "deidflow-monitor"  # deidflow's own: readiness and what Orthanc still holds (ids only)
READER_USER = "deidflow-reader"  # only with reader=True: a reference Orthanc that tests read back from
# What the monitor may GET (exact paths, ids and counts only; Orthanc 1.10 has no requestedTags).
MONITOR_PATHS = ("/system", "/changes", "/instances")

# Where Debian puts the binary and the plugins (dpkg -L orthanc orthanc-dicomweb orthanc-python).
# Plugins are listed one by one rather than loading the whole folder: Debian's folder also holds
# ModalityWorklists and ServeFolders, which the cloud front door does not run.
_BINARY_CANDIDATES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc", "/usr/local/sbin/Orthanc")
_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc", "/usr/local/share/orthanc/plugins")
_DICOMWEB_LIB = "libOrthancDicomWeb.so"
_PYTHON_LIB = "libOrthancPython.so"


class OrthancNotInstalled(RuntimeError):
    """The Orthanc binary or one of its plugins is missing; the message says how to install them."""


class OrthancFailed(RuntimeError):
    """Orthanc did not start or did not answer; the message points at its log."""


@dataclass(frozen=True)
class OrthancInstallation:
    binary: Path
    dicomweb_plugin: Path
    python_plugin: Path


def _find_library(name: str, dirs: Iterable[str]) -> Path | None:
    for folder in dirs:
        exact = Path(folder) / name
        if exact.is_file():
            return exact
        # /usr/lib/orthanc holds only versioned names (libOrthancPython.so.4.0).
        versioned = sorted(Path(folder).glob(name + ".*")) if Path(folder).is_dir() else []
        if versioned:
            return versioned[-1]
    return None


def find_orthanc() -> OrthancInstallation:
    """Locate the Orthanc binary and the DICOMweb and Python plugins, or say how to install them.

    `DEIDFLOW_ORTHANC_BINARY` and `DEIDFLOW_ORTHANC_PLUGIN_DIRS` (os.pathsep-separated) override the
    Debian locations, for a hand-built Orthanc.
    """
    override = os.environ.get("DEIDFLOW_ORTHANC_BINARY")
    # /usr/sbin is not on an ordinary user's PATH, so look there explicitly as well.
    candidates = [override] if override else [shutil.which("Orthanc"), *_BINARY_CANDIDATES]
    binary = next((Path(c) for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)), None)
    dirs_env = os.environ.get("DEIDFLOW_ORTHANC_PLUGIN_DIRS")
    dirs = dirs_env.split(os.pathsep) if dirs_env else list(_PLUGIN_DIRS)
    dicomweb = _find_library(_DICOMWEB_LIB, dirs)
    python = _find_library(_PYTHON_LIB, dirs)
    missing = [
        what
        for what, found in (
            ("the Orthanc binary (package orthanc)", binary),
            (f"{_DICOMWEB_LIB} (package orthanc-dicomweb)", dicomweb),
            (f"{_PYTHON_LIB} (package orthanc-python)", python),
        )
        if found is None
    ]
    if missing:
        raise OrthancNotInstalled(f"missing {', '.join(missing)}; {APT_HINT}")
    assert binary and dicomweb and python
    return OrthancInstallation(binary, dicomweb, python)


def plugin_path() -> Path:
    """The forwarding plugin as a real file (Orthanc needs a path; the package is installed unzipped)."""
    return Path(str(resources.files("deidflow.data").joinpath(PLUGIN_FILE)))


def http_filter_path() -> Path:
    """The HTTP filter (Lua, run by Orthanc itself), the same text the cloud's Orthanc loads."""
    return Path(str(resources.files("deidflow.data").joinpath(HTTP_FILTER_FILE)))


def free_port() -> int:
    """A port free on loopback right now (another process may take it before Orthanc does: see start())."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def load_or_create_credentials(
    state_dir: Path, user: str = USER, file_name: str = "credentials.json"
) -> tuple[str, str]:
    """A user's password lives in the state dir (0600), generated once, never committed.
    `credentials.json` is the sending system's (store only); the others are deidflow's own."""
    path = state_dir / file_name
    if path.exists():
        data = json.loads(path.read_text("utf-8"))
        return str(data["username"]), str(data["password"])
    password = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"username": user, "password": password}, fh)
    return user, password


def http_filter_section(
    senders: Iterable[str], monitors: Iterable[str], readers: Iterable[str] = ()
) -> dict[str, object]:
    """The configuration the HTTP filter reads (user names and paths only)."""
    return {
        "Senders": sorted(senders),
        "Monitors": sorted(monitors),
        "MonitorPaths": list(MONITOR_PATHS),
        "Readers": sorted(readers),
        "DicomWebRoot": DICOMWEB_ROOT,
    }


def orthanc_config(
    installation: OrthancInstallation,
    state_dir: Path,
    target_folder: Path,
    credentials: tuple[str, str],
    *,
    http_port: int,
    dicom_port: int,
    aet: str = DEFAULT_AET,
    calling_aet: str = DEFAULT_CALLING_AET,
    delete_after_forward: bool = True,
    monitor_credentials: tuple[str, str] | None = None,
    reader_credentials: tuple[str, str] | None = None,
) -> dict[str, object]:
    """The local configuration, mirroring the cloud one where it matters (see docs/orthanc-local.md).

    `credentials` are the sending system's: the HTTP filter lets them store and nothing else (no
    read-back of what was sent, as in the cloud). `monitor_credentials` may GET ids and counts
    (MONITOR_PATHS); `reader_credentials`, only when given, may GET anything (a reference Orthanc).

    Orthanc 1.10 has no option to bind its listeners to one address: both the HTTP server and the
    DICOM server listen on every interface. Loopback-only is enforced by Orthanc itself instead:
    RemoteAccessAllowed=false refuses HTTP clients that are not on the local host, and the DICOM
    server accepts C-ECHO/C-STORE only from one registered AET whose address must be 127.0.0.1
    (DicomCheckModalityHost), with every other DICOM service off.
    """
    user, password = credentials
    users = {user: password}
    for extra in (monitor_credentials, reader_credentials):
        if extra is not None:
            users[extra[0]] = extra[1]
    return {
        "Name": "deidflow-local",
        "StorageDirectory": str(state_dir / "storage"),
        # The cloud keeps its index in RDS PostgreSQL; locally Orthanc's built-in SQLite is enough.
        "IndexDirectory": str(state_dir / "index"),
        "TemporaryDirectory": str(state_dir / "tmp"),
        # As in the cloud: the stored bytes are the received bytes, handed over unchanged.
        "StorageCompression": False,
        "OverwriteInstances": False,
        "Plugins": [str(installation.dicomweb_plugin), str(installation.python_plugin)],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": users,
        "LuaScripts": [str(http_filter_path())],
        "DeidflowHttpFilter": http_filter_section(
            [user],
            [monitor_credentials[0]] if monitor_credentials else [],
            [reader_credentials[0]] if reader_credentials else [],
        ),
        "SslEnabled": False,  # loopback only; the cloud terminates TLS at the load balancer
        # An ingest front door, not a viewer: instances are deleted once handed over anyway.
        "OrthancExplorerEnabled": False,
        "WebDavEnabled": False,
        "ExecuteLuaEnabled": False,
        "SaveJobs": False,
        "DeidentifyLogs": True,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowFindWorklist": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "DicomCheckModalityHost": True,
        "DicomModalitiesInDatabase": False,
        "DicomModalities": {
            "deidflow-local-scu": {
                "AET": calling_aet,
                "Host": LOOPBACK,
                "Port": 104,  # only used if Orthanc connected out, which nothing here asks it to do
                "AllowEcho": True,
                "AllowStore": True,
                "AllowFind": False,
                "AllowFindWorklist": False,
                "AllowGet": False,
                "AllowMove": False,
                "AllowStorageCommitment": False,
            }
        },
        "UnknownSopClassAccepted": False,
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT,
            "EnableWado": False,
            "Host": f"{LOOPBACK}:{http_port}",
            "Ssl": False,
        },
        "PythonScript": str(plugin_path()),
        "PythonVerbose": False,
        "DeidflowForwardToDrop": {"TargetFolder": str(target_folder), "DeleteAfterForward": delete_after_forward},
    }


def _auth_header(credentials: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode("ascii")


def _request(
    method: str,
    url: str,
    credentials: tuple[str, str],
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", _auth_header(credentials))
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _in_use(port: int) -> bool:
    """Whether something listens on `port` already (Orthanc binds every interface, so test those)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port left in TIME_WAIT by an earlier run is free, a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return True
    return False


def _die_with_parent() -> Callable[[], None] | None:
    """What Orthanc's process runs before it starts (Linux): the kernel then sends it SIGTERM when
    the process that started it ends, however that ends (SIGKILL included), so it never outlives
    deidflow. Looked up here, in the parent: between fork and exec the child may only call it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # this process's own C library
    except (OSError, AttributeError):
        return None  # not Linux: the context manager's stop is all there is

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_parent_death_signal


_PR_SET_PDEATHSIG = 1


class LocalOrthanc:
    """Orthanc as a subprocess on loopback; a context manager that always stops it.

    `http_port`/`dicom_port` 0 picks free loopback ports (and retries with new ones if another
    process takes a port between the pick and Orthanc's bind).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        drop_dir: str | os.PathLike[str],
        *,
        http_port: int = 0,
        dicom_port: int = 0,
        aet: str = DEFAULT_AET,
        calling_aet: str = DEFAULT_CALLING_AET,
        delete_after_forward: bool = True,
        installation: OrthancInstallation | None = None,
        startup_timeout: float = 30.0,
        reader: bool = False,
    ):
        self.state_dir = Path(state_dir).resolve()
        self.drop_dir = Path(drop_dir).resolve()
        self.target_folder = self.drop_dir / DROP_SUBFOLDER
        self.aet = aet
        self.calling_aet = calling_aet
        self.delete_after_forward = delete_after_forward
        self.installation = installation or find_orthanc()
        self.startup_timeout = startup_timeout
        self._requested_ports = (http_port, dicom_port)
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.config_path = self.state_dir / "orthanc.json"
        self.log_path = self.state_dir / "orthanc.log"
        self.reader = reader
        self.credentials: tuple[str, str] = ("", "")  # the sending system's: store only
        self.monitor_credentials: tuple[str, str] = ("", "")
        self.reader_credentials: tuple[str, str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return self.url + DICOMWEB_ROOT.rstrip("/")

    # -- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> LocalOrthanc:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        for folder in (self.state_dir, self.state_dir / "storage", self.state_dir / "index", self.state_dir / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)  # the config holds the password; storage briefly holds PHI
        self.target_folder.mkdir(parents=True, exist_ok=True)
        self.credentials = load_or_create_credentials(self.state_dir)
        self.monitor_credentials = load_or_create_credentials(self.state_dir, MONITOR_USER, "monitor.json")
        if self.reader:
            self.reader_credentials = load_or_create_credentials(self.state_dir, READER_USER, "reader.json")
        auto = 0 in self._requested_ports
        attempts = 3 if auto else 1
        for attempt in range(attempts):
            self.http_port = self._requested_ports[0] or free_port()
            self.dicom_port = self._requested_ports[1] or free_port()
            for port, option in zip(self._requested_ports, ("--http-port", "--dicom-port"), strict=True):
                if port and _in_use(port):  # one asked for: say so, rather than Orthanc's exit status
                    raise OrthancFailed(f"port {port} is in use: choose another with {option}")
            try:
                self._launch()
                return
            except OrthancFailed:
                # Only a lost race for an auto-picked port is worth another try.
                if attempt + 1 == attempts or self._port_taken() is False:
                    raise

    def _port_taken(self) -> bool:
        return any(_in_use(port) for port in (self.http_port, self.dicom_port))

    def _launch(self) -> None:
        config = orthanc_config(
            self.installation,
            self.state_dir,
            self.target_folder,
            self.credentials,
            http_port=self.http_port,
            dicom_port=self.dicom_port,
            aet=self.aet,
            calling_aet=self.calling_aet,
            delete_after_forward=self.delete_after_forward,
            monitor_credentials=self.monitor_credentials,
            reader_credentials=self.reader_credentials,
        )
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(config, fh, indent=2)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed right after
        try:
            # No --verbose/--trace: Orthanc's verbose logs print DICOM tags, which are PHI.
            self._process = subprocess.Popen(
                [str(self.installation.binary), str(self.config_path)],
                cwd=self.state_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches us; we stop Orthanc ourselves
                preexec_fn=_die_with_parent(),
            )
        finally:
            log.close()
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while True:
            assert self._process is not None
            code = self._process.poll()
            if code is not None:
                raise OrthancFailed(f"Orthanc exited with status {code} while starting; see {self.log_path}")
            with contextlib.suppress(OSError):
                status, _ = _request("GET", self.url + "/system", self.monitor_credentials, timeout=2.0)
                if status == 200:
                    return
            if time.monotonic() > deadline:
                raise OrthancFailed(f"Orthanc did not answer within {self.startup_timeout:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, wait, then kill: Orthanc must never outlive the test or command that started it."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- small REST helpers (ids and counts only: no header values) ----------------------------------

    def get_json(self, path: str) -> object:
        """GET as deidflow's monitor user (MONITOR_PATHS only); the sender's credentials cannot read."""
        status, body = _request("GET", self.url + path, self.monitor_credentials)
        if status != 200:
            raise OrthancFailed(f"GET {path} answered HTTP {status}")
        return json.loads(body)

    def stored_instance_ids(self) -> list[str]:
        """What Orthanc still holds (empty once everything was handed over and deleted)."""
        ids = self.get_json("/instances")
        assert isinstance(ids, list)
        return [str(i) for i in ids]


# -- clients --------------------------------------------------------------------------------------------


class StowError(RuntimeError):
    """STOW-RS failed as a whole or for some instances; the message carries counts and status only."""


def _multipart_related(files: Iterable[str | os.PathLike[str]], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        yield Path(path).read_bytes()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def stow_rs(
    url: str,
    credentials: tuple[str, str],
    files: Iterable[str | os.PathLike[str]],
    *,
    dicomweb_root: str = DICOMWEB_ROOT,
    timeout: float = 60.0,
) -> int:
    """POST the files to <url><root>studies as multipart/related; return how many were stored.

    One request for all files (what PACS exports do). Raises StowError if the server refused the
    request or any instance (DICOM JSON FailedSOPSequence, 0008,1198).
    """
    paths = list(files)
    boundary = f"deidflow-{uuid.uuid4().hex}"
    body = b"".join(_multipart_related(paths, boundary))
    endpoint = url.rstrip("/") + "/" + dicomweb_root.strip("/") + "/studies"
    status, answer = _request(
        "POST",
        endpoint,
        credentials,
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=timeout,
    )
    if status not in (200, 202):
        raise StowError(f"STOW-RS of {len(paths)} instance(s) answered HTTP {status}")
    result = json.loads(answer) if answer.strip() else {}
    failed = len(result.get("00081198", {}).get("Value", []))
    stored = len(result.get("00081199", {}).get("Value", []))
    if failed or status == 202:
        raise StowError(f"STOW-RS stored {stored} of {len(paths)} instance(s); {failed} failed (HTTP {status})")
    return stored


def c_store(
    host: str,
    port: int,
    called_aet: str,
    files: Iterable[str | os.PathLike[str]],
    *,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeout: float = 30.0,
) -> int:
    """Send the files with C-STORE over one association (pynetdicom); return how many succeeded.

    Raises RuntimeError naming the status codes if any instance was refused (never its contents).
    """
    try:
        from pynetdicom import AE
    except ImportError as exc:  # an optional dependency: only senders need it
        raise RuntimeError("c_store needs pynetdicom: pip install 'pynetdicom>=3.0'") from exc

    datasets = [dcmread(path) for path in files]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # Propose exactly the (SOP class, transfer syntax) pairs the files carry: sent as they are.
    for context in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
        ae.add_requested_context(context[0], context[1])
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise RuntimeError(f"C-STORE association to {called_aet}@{host}:{port} was not accepted")
    refused: list[str] = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                refused.append("no response" if code is None else f"0x{int(code):04X}")
    finally:
        assoc.release()
    if refused:
        raise RuntimeError(f"C-STORE refused {len(refused)} of {len(datasets)} instance(s): {sorted(set(refused))}")
    return len(datasets)
