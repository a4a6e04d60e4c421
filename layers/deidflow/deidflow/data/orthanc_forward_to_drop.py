"""Orthanc Python plugin: hand every stored instance to the local drop folder, then forget it.

This file runs inside Orthanc's embedded interpreter (Debian's orthanc-python links the system
Python), not in deidflow's virtualenv: it must use the standard library only and never import
deidflow. It ships inside the package (deidflow/data/) so `deidflow.local.orthanc` can point Orthanc
at it from an installed wheel as well as from a checkout.

What it does, and why:

- On every stored instance (STOW-RS, C-STORE, REST upload) it writes the instance's bytes to
  `<TargetFolder>/<orthanc instance id>.dcm`. The write goes to a hidden temporary name first, is
  fsynced, then renamed with os.replace: a watcher never sees half a file, and hidden names are the
  convention for "not ready" that the ingest skips. The write happens synchronously in the callback,
  so a sender is only told "stored" once the hand-over is on disk (at-least-once, never lost).
- Files are named by Orthanc's instance id (a SHA-1 over patient ID and UIDs), never by UIDs or
  names: a directory listing must not reveal anything about the patient.
- With DeleteAfterForward (the default) each forwarded instance is then deleted from Orthanc, so the
  local Orthanc storage does not accumulate PHI: in the cloud the copy in the ingest bucket is the
  hand-over and the pipeline owns it from there; locally the drop folder plays that role. Deletion
  calls Orthanc's REST API, which the SDK forbids inside the stored-instance callback (deadlocks),
  so ids go through a queue to one worker thread.
- When Orthanc starts (with DeleteAfterForward), whatever is still in its storage (an instance
  whose hand-over failed, or whose deletion was pending at shutdown) is forwarded again and
  deleted: the drop folder is idempotent downstream, so re-forwarding is always safe.
- Logs carry instance ids, counts and error classes, never header values (PHI).

Configuration (a section of the Orthanc configuration file, written by deidflow.local.orthanc):

    "DeidflowForwardToDrop": {"TargetFolder": "/path/to/drop/orthanc", "DeleteAfterForward": true}

The environment variable DEIDFLOW_ORTHANC_TARGET_FOLDER is used when the section has no folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import threading
from pathlib import Path
from typing import Any

CONFIG_SECTION = "DeidflowForwardToDrop"
TARGET_ENV = "DEIDFLOW_ORTHANC_TARGET_FOLDER"
# Orthanc ids are SHA-1 digests printed as five dash-separated groups; anything else is refused so a
# crafted id can never become a path outside the target folder.
_ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")


def target_name(instance_id: str) -> str:
    if not _ORTHANC_ID.match(instance_id):
        raise ValueError("not an Orthanc instance id")
    return f"{instance_id}.dcm"


def write_atomically(folder: Path, instance_id: str, data: bytes) -> Path:
    """Write `data` as <folder>/<instance_id>.dcm: hidden temp file, fsync, os.replace."""
    target = folder / target_name(instance_id)
    # Unique per process and thread: Orthanc may store the same instance twice concurrently.
    tmp = folder / f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    # 0600: these are identifiable images; only the user running Orthanc and the ingest reads them.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # The rename itself must survive a crash, or the watcher could miss a file Orthanc acknowledged.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def read_settings(configuration_json: str, environ: dict[str, str]) -> tuple[Path, bool]:
    section = json.loads(configuration_json).get(CONFIG_SECTION) or {}
    folder = section.get("TargetFolder") or environ.get(TARGET_ENV)
    if not folder:
        raise RuntimeError(f"set {CONFIG_SECTION}.TargetFolder in the Orthanc configuration or ${TARGET_ENV}")
    return Path(folder), bool(section.get("DeleteAfterForward", True))


class Forwarder:
    """The plugin's state; `api` is the `orthanc` module (a fake one in tests)."""

    def __init__(self, api: Any, folder: Path, delete_after_forward: bool):
        self.api = api
        self.folder = folder
        self.delete_after_forward = delete_after_forward
        self.pending: queue.Queue[str | None] = queue.Queue()
        self.worker: threading.Thread | None = None

    # -- called by Orthanc -------------------------------------------------------------------------

    def on_stored_instance(self, dicom: Any, instance_id: str) -> None:
        # Synchronous on purpose (see the module docstring); an exception here is logged by Orthanc
        # and the instance stays in its storage, to be retried by the start-up sweep.
        try:
            write_atomically(self.folder, instance_id, dicom.GetInstanceData())
        except Exception as exc:
            self.api.LogError(f"deidflow: could not hand over instance {instance_id}: {type(exc).__name__}")
            raise
        self.api.LogInfo(f"deidflow: handed over instance {instance_id}")
        if self.delete_after_forward:
            self.pending.put(instance_id)

    def on_change(self, change_type: int, level: int, resource_id: str) -> None:
        if change_type == self.api.ChangeType.ORTHANC_STARTED:
            self.start_worker()
            if self.delete_after_forward:
                # Storage should be empty; anything left missed its hand-over or its deletion.
                self.pending.put("")  # "" asks the worker to sweep
        elif change_type == self.api.ChangeType.ORTHANC_STOPPED:
            self.stop_worker()

    # -- the worker thread: the only place that calls Orthanc's REST API -----------------------------

    def start_worker(self) -> None:
        if self.worker is None:
            self.worker = threading.Thread(target=self._run, name="deidflow-forward", daemon=True)
            self.worker.start()

    def stop_worker(self, timeout: float = 5.0) -> None:
        if self.worker is not None:
            self.pending.put(None)
            self.worker.join(timeout)
            self.worker = None

    def _run(self) -> None:
        while True:
            item = self.pending.get()
            if item is None:
                return
            try:
                if item == "":
                    self.sweep()
                else:
                    self.delete(item)
            except Exception as exc:  # noqa: BLE001 - an escaped error would kill the worker, and with it every later deletion
                self.api.LogError(f"deidflow: forwarding worker: {type(exc).__name__}")

    def delete(self, instance_id: str) -> None:
        try:
            self.api.RestApiDelete(f"/instances/{instance_id}")
        # Already gone (a duplicate delete) is fine; anything else is logged and retried by the next sweep.
        except Exception as exc:  # noqa: BLE001 - orthanc.OrthancException is the usual one
            self.api.LogWarning(f"deidflow: could not delete instance {instance_id}: {type(exc).__name__}")

    def sweep(self) -> None:
        """Forward (again) and delete whatever is still stored: a crash or restart loses nothing."""
        ids = json.loads(self.api.RestApiGet("/instances"))
        for instance_id in ids:
            try:
                write_atomically(self.folder, instance_id, self.api.GetDicomForInstance(instance_id))
            except Exception as exc:  # noqa: BLE001 - one bad instance must not stop the sweep
                self.api.LogError(f"deidflow: could not hand over instance {instance_id}: {type(exc).__name__}")
                continue
            if self.delete_after_forward:
                self.delete(instance_id)
        if ids:
            self.api.LogWarning(f"deidflow: start-up sweep handed over {len(ids)} instance(s) left in storage")


def install(api: Any) -> Forwarder:
    folder, delete_after_forward = read_settings(api.GetConfiguration(), dict(os.environ))
    folder.mkdir(parents=True, exist_ok=True)
    forwarder = Forwarder(api, folder, delete_after_forward)
    api.RegisterOnStoredInstanceCallback(forwarder.on_stored_instance)
    api.RegisterOnChangeCallback(forwarder.on_change)
    api.LogWarning(
        f"deidflow: forwarding stored instances to the drop folder (delete after forward: {delete_after_forward})"
    )
    return forwarder


try:
    import orthanc  # the real one only exists inside Orthanc's embedded interpreter
except ImportError:  # imported by tests or tooling: the helpers above are usable, nothing registers
    orthanc = None  # type: ignore[assignment]

# Outside Orthanc, `import orthanc` can also find an unrelated namespace package (the repository's own
# orthanc/ folder when its root is on sys.path): register only with the real plugin API.
if hasattr(orthanc, "RegisterOnStoredInstanceCallback"):
    FORWARDER = install(orthanc)
