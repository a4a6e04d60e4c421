"""A real Orthanc on loopback receives a PHI-laden study by STOW-RS and another by C-STORE, hands
every instance to the drop folder, and the pipeline turns the drop folder into a clean research folder.

Needs Debian's orthanc, orthanc-dicomweb and orthanc-python (skipped with the apt command otherwise)
and pynetdicom for the C-STORE sender.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from deidflow.local.orthanc import (
    DROP_SUBFOLDER,
    LocalOrthanc,
    OrthancFailed,
    OrthancInstallation,
    OrthancNotInstalled,
    _multipart_related,
    _request,
    c_store,
    find_orthanc,
    free_port,
    stow_rs,
)
from deidflow.pseudonym import Pseudonymizer
from deidflow.storage import CATALOG_DUMP, INDEX_DUMP, research_key
from deidflow.testing.synthetic import Corpus, make_corpus, write_corpus

from ..conftest import TEST_KEY

pytestmark = pytest.mark.integration

ARRIVAL_TIMEOUT = 20.0  # seconds; eight small instances normally arrive in well under one
ORTHANC_ID_NAME = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}\.dcm$")


# -- the step the workflow owner will swap for the local Step Functions run ----------------------------


def run_pipeline(drop_dir: Path, research_dir: Path, key: bytes) -> None:
    """What `deidflow local up` does: hand the drop over to the local ingest bucket under orthanc/,
    run the real state machine on moto, fetch the research bucket into research_dir.
    """
    from deidflow.local.workflow import LocalWorkflow

    with LocalWorkflow(key, project=Path(__file__).resolve().parents[2]) as workflow:
        keys = workflow.take_over(drop_dir)
        assert keys and all(k.startswith("orthanc/") for k in keys)
        reports = workflow.run_pipe()
        assert all(r.status == "SUCCEEDED" for r in reports)
        outcomes = [o.status for r in reports for o in r.objects if o.status != "skipped"]
        assert outcomes == ["published"] * len(keys), outcomes
        assert not any(drop_dir.glob("*.dcm"))  # handed over, nothing left on disk
        workflow.download_research(research_dir)


# -- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installation() -> OrthancInstallation:
    try:
        return find_orthanc()
    except OrthancNotInstalled as exc:
        pytest.skip(f"no local Orthanc: {exc}")


@pytest.fixture(scope="module")
def orthanc(installation: OrthancInstallation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    base = tmp_path_factory.mktemp("orthanc")
    # The context manager stops Orthanc (terminate, wait, kill) however the tests end.
    with LocalOrthanc(base / "state", base / "drop", installation=installation) as server:
        yield server
    assert not server.running


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Two patients, one study each: three CT images citing each other plus an SR citing them."""
    corpus = make_corpus(n_patients=2, studies_per_patient=1, images_per_series=3, seed=4242)
    return write_corpus(corpus, tmp_path_factory.mktemp("sent"))


# -- helpers ------------------------------------------------------------------------------------------


def ready_files(folder: Path) -> list[Path]:
    """Finished hand-overs only: hidden names are temporaries still being written."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def wait_for(condition_name: str, check: object, timeout: float = ARRIVAL_TIMEOUT) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {condition_name}")
        time.sleep(0.1)


def non_loopback_address() -> str | None:
    # Connecting a UDP socket sends nothing; it only asks the kernel which local address would be used.
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("192.0.2.1", 9))
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if address.startswith("127.") else address


# -- tests --------------------------------------------------------------------------------------------


def test_stow_and_c_store_reach_the_drop_folder_and_come_out_clean(
    orthanc: LocalOrthanc, sent: Corpus, tmp_path: Path
) -> None:
    pytest.importorskip("pynetdicom", reason="the C-STORE sender needs pynetdicom")
    by_stow, by_c_store = sent.studies
    stow_files = [sent.files[str(i.dataset.SOPInstanceUID)] for i in by_stow.instances]
    c_store_files = [sent.files[str(i.dataset.SOPInstanceUID)] for i in by_c_store.instances]

    assert stow_rs(orthanc.url, orthanc.credentials, stow_files) == len(stow_files)
    assert c_store("127.0.0.1", orthanc.dicom_port, orthanc.aet, c_store_files, calling_aet=orthanc.calling_aet) == len(
        c_store_files
    )

    drop = orthanc.target_folder
    assert drop == orthanc.drop_dir / DROP_SUBFOLDER
    expected = len(stow_files) + len(c_store_files)
    wait_for(f"{expected} files in the drop folder", lambda: len(ready_files(drop)) >= expected)
    # Handed over, then deleted: Orthanc's own storage must not keep PHI.
    wait_for("Orthanc's storage to empty", lambda: orthanc.stored_instance_ids() == [])

    # The drop folder holds what Orthanc received, named by Orthanc id (never a UID or a name).
    arrived = ready_files(drop)
    assert len(arrived) == expected
    assert all(ORTHANC_ID_NAME.match(p.name) for p in arrived), [p.name for p in arrived]
    sent_by_uid = {uid: path for uid, path in sent.files.items()}
    stow_uids = {str(i.dataset.SOPInstanceUID) for i in by_stow.instances}
    seen: set[str] = set()
    for path in arrived:
        ds = pydicom.dcmread(path)
        uid = str(ds.SOPInstanceUID)
        seen.add(uid)
        original = sent_by_uid[uid]
        if uid in stow_uids:
            # STOW-RS carries the whole Part 10 file, and Orthanc stores it unchanged.
            assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(original.read_bytes()).digest()
        else:
            # C-STORE carries the dataset only; the receiver writes its own file meta header.
            assert ds == pydicom.dcmread(original)
            assert ds.file_meta.TransferSyntaxUID == pydicom.dcmread(original).file_meta.TransferSyntaxUID
    assert seen == set(sent.files)

    research = tmp_path / "research"
    run_pipeline(orthanc.target_folder, research, TEST_KEY)

    # Every sent instance is in the research layout, under its new UIDs, and nothing else is.
    pseudonyms = Pseudonymizer(TEST_KEY)
    wanted = {
        research_key(
            pseudonyms.uid(str(i.dataset.StudyInstanceUID)),
            pseudonyms.uid(str(i.dataset.SeriesInstanceUID)),
            pseudonyms.uid(str(i.dataset.SOPInstanceUID)),
        )
        for i in sent.instances
    }
    outputs = sorted(p for p in research.rglob("*") if p.is_file())
    # Beside the instances, the index and catalog the research API serves them with.
    assert {p.relative_to(research).as_posix() for p in outputs} == wanted | {INDEX_DUMP, CATALOG_DUMP}

    # No planted identifier anywhere: not in output bytes, the index, paths, nor Orthanc's log.
    planted = [v.encode() for v in sent.planted_values()]
    for path in outputs:
        data = path.read_bytes()
        leaked = [v for v in planted if v in data or v in str(path).encode()]
        assert not leaked, f"{path.relative_to(research)} still carries {len(leaked)} planted value(s)"
        if path.suffix == ".dcm":
            assert pydicom.dcmread(path).PatientIdentityRemoved == "YES"
    log = orthanc.log_path.read_bytes()
    assert not [v for v in planted if v in log], "Orthanc's log carries planted values"


def test_only_loopback_and_the_registered_sender_get_in(orthanc: LocalOrthanc, sent: Corpus) -> None:
    pytest.importorskip("pynetdicom", reason="the C-STORE sender needs pynetdicom")
    one = [next(iter(sent.files.values()))]
    before = len(ready_files(orthanc.target_folder))

    assert _request("GET", orthanc.url + "/system", (orthanc.credentials[0], "wrong"))[0] == 401
    with pytest.raises(RuntimeError, match="not accepted"):
        c_store("127.0.0.1", orthanc.dicom_port, orthanc.aet, one, calling_aet="SOMEONE_ELSE")

    # Orthanc 1.10 listens on every interface (it has no bind-address option), so refusing
    # non-loopback peers is Orthanc's own job: RemoteAccessAllowed=false and DicomCheckModalityHost.
    address = non_loopback_address()
    if address is not None:
        status, _ = _request("GET", f"http://{address}:{orthanc.http_port}/system", orthanc.credentials)
        assert status in (401, 403)
        with pytest.raises(RuntimeError, match="not accepted"):
            c_store(address, orthanc.dicom_port, orthanc.aet, one, calling_aet=orthanc.calling_aet)
    assert len(ready_files(orthanc.target_folder)) == before


def test_what_orthanc_still_holds_at_start_is_handed_over(
    installation: OrthancInstallation, sent: Corpus, tmp_path: Path
) -> None:
    """A crash between hand-over and deletion (or a failed hand-over) loses nothing and keeps nothing."""
    files = [sent.files[str(i.dataset.SOPInstanceUID)] for i in sent.studies[0].instances]
    state, drop = tmp_path / "state", tmp_path / "drop"
    # First run keeps what it stores, standing in for deletions that never happened.
    with LocalOrthanc(state, drop, installation=installation, delete_after_forward=False) as server:
        stow_rs(server.url, server.credentials, files)
        wait_for("the first hand-over", lambda: len(ready_files(server.target_folder)) == len(files))
        assert len(server.stored_instance_ids()) == len(files)
    for path in ready_files(drop / DROP_SUBFOLDER):
        path.unlink()  # as if those hand-overs had been lost
    with LocalOrthanc(state, drop, installation=installation) as server:
        wait_for("the start-up sweep", lambda: server.stored_instance_ids() == [])
        assert len(ready_files(server.target_folder)) == len(files)


def _orthancs_of(state: Path) -> list[int]:
    """Pids of the Orthanc processes started with a configuration under `state`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # gone meanwhile
            if command and command[0].endswith(b"Orthanc") and any(str(state).encode() in a for a in command):
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_local_up_stopped_by_any_signal_leaves_no_orthanc(
    installation: OrthancInstallation, tmp_path: Path, stop_with: signal.Signals
) -> None:
    """kill, timeout, systemd and container runtimes send SIGTERM; a closed terminal SIGHUP; and a
    SIGKILL leaves deidflow no chance to clean up: Orthanc must go with it every time."""
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc to find the Orthanc process")
    key_file = tmp_path / "key"
    key_file.write_text(TEST_KEY.hex())
    state, http_port = tmp_path / "state", free_port()
    command = [str(Path(sys.executable).with_name("deidflow")), "local", "up", str(tmp_path / "research")]
    command += ["--state", str(state), "--http-port", str(http_port), "--dicom-port", str(free_port())]
    command += ["--key-file", str(key_file), "--project", str(Path(__file__).resolve().parents[2])]
    up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if "Orthanc is up" in line:
                break
        else:
            pytest.fail(f"local up never came up: {''.join(lines)[-2000:]}")
        assert len(_orthancs_of(state)) == 1
        up.send_signal(stop_with)
        up.wait(timeout=30)
        wait_for("Orthanc to stop", lambda: not _orthancs_of(state), timeout=15)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", http_port)) != 0, "something still listens on Orthanc's port"
        if stop_with != signal.SIGKILL:
            assert up.returncode == 0
    finally:
        if up.poll() is None:
            up.kill()
        for pid in _orthancs_of(state):
            os.kill(pid, signal.SIGKILL)


def test_a_busy_port_is_named_with_the_option_that_changes_it(
    installation: OrthancInstallation, tmp_path: Path
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LocalOrthanc(tmp_path / "state", tmp_path / "drop", installation=installation, http_port=port)
        with pytest.raises(OrthancFailed, match=f"port {port} is in use: choose another with --http-port"):
            server.start()
    assert not _orthancs_of(tmp_path / "state")


def test_a_sender_stores_but_reads_nothing_back(orthanc: LocalOrthanc, sent: Corpus) -> None:
    """Store-only (the HTTP filter, orthanc_http_filter.lua, the cloud's too): the sending system's
    credentials can POST /instances and STOW-RS and nothing else; every read of what was sent (REST,
    WADO-RS, WADO-URI, QIDO-RS) is 403. Only registered modalities may C-STORE."""
    pytest.importorskip("pynetdicom", reason="the C-STORE sender needs pynetdicom")
    study = sent.studies[0]
    instance = study.instances[0]
    path = sent.files[str(instance.dataset.SOPInstanceUID)]
    study_uid, series_uid = str(instance.dataset.StudyInstanceUID), str(instance.dataset.SeriesInstanceUID)
    sop_uid = str(instance.dataset.SOPInstanceUID)
    before = len(ready_files(orthanc.target_folder))

    status, body = _request("POST", orthanc.url + "/instances", orthanc.credentials, data=path.read_bytes())
    assert status == 200, status
    orthanc_id = json.loads(body)["ID"]
    assert stow_rs(orthanc.url, orthanc.credentials, [path]) == 1
    # STOW-RS to one study (POST /dicom-web/studies/<Study UID>).
    boundary = "deidflow-test-boundary"
    status, _ = _request(
        "POST",
        f"{orthanc.url}/dicom-web/studies/{study_uid}",
        orthanc.credentials,
        data=b"".join(_multipart_related([path], boundary)),
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert status == 200, status

    web = "/dicom-web"
    reads = [
        "/system",
        "/instances",
        f"/instances/{orthanc_id}",
        f"/instances/{orthanc_id}/file",
        f"/instances/{orthanc_id}/tags",
        "/studies",
        "/patients",
        "/changes",
        f"{web}/studies",  # QIDO-RS
        f"{web}/studies/{study_uid}",  # WADO-RS
        f"{web}/studies/{study_uid}/metadata",
        f"{web}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}",
        f"/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}&objectUID={sop_uid}",
    ]
    for uri in reads:
        assert _request("GET", orthanc.url + uri, orthanc.credentials)[0] == 403, uri
    others = [
        ("POST", "/tools/find", b'{"Level": "Study", "Query": {}}'),
        ("POST", f"/instances/{orthanc_id}/anonymize", b"{}"),
        ("POST", "/instances/", path.read_bytes()),  # not the exact path: refused, not interpreted
        ("PUT", "/modalities/mine", b'{"AET": "MINE", "Host": "127.0.0.1", "Port": 104}'),
        ("DELETE", f"/instances/{orthanc_id}", None),
    ]
    for method, uri, data in others:
        assert _request(method, orthanc.url + uri, orthanc.credentials, data=data)[0] == 403, (method, uri)

    # deidflow's monitor user sees ids and counts, never an instance, its tags or its file.
    assert _request("GET", orthanc.url + "/instances", orthanc.monitor_credentials)[0] == 200
    for uri in (f"/instances/{orthanc_id}/file", f"/instances/{orthanc_id}/tags", "/studies", f"{web}/studies"):
        assert _request("GET", orthanc.url + uri, orthanc.monitor_credentials)[0] == 403, uri
    assert _request("POST", orthanc.url + "/instances", orthanc.monitor_credentials, data=path.read_bytes())[0] == 403

    # DICOM: the registered calling AET stores; any other is refused at association.
    assert c_store("127.0.0.1", orthanc.dicom_port, orthanc.aet, [path], calling_aet=orthanc.calling_aet) == 1
    with pytest.raises(RuntimeError, match="not accepted"):
        c_store("127.0.0.1", orthanc.dicom_port, orthanc.aet, [path], calling_aet="NOT_REGISTERED")

    # What was stored went on to the drop folder (one file per instance, named by its Orthanc id).
    wait_for("the stored copies in the drop folder", lambda: len(ready_files(orthanc.target_folder)) >= before)
    assert (orthanc.target_folder / f"{orthanc_id}.dcm").is_file()
