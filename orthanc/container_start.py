"""Runs first in the cloud's Orthanc container, then hands over to the image's own entrypoint.

The task definition runs this text with the image's python3 (`python3 -c`; the template carries a
copy that tests/unit/test_orthanc_template.py keeps identical to this file). Standard library only.

- Registered users: one per sending system, each from its own Secrets Manager secret (environment
  DEIDFLOW_SENDER_<n>: {"username", "password"}), plus the health probe's user, whose password is
  generated here at every start and never leaves the task (the probe reads it from the generated
  configuration). Senders may only store (the HTTP filter), the probe only GET /system and /changes.
- Modalities: DEIDFLOW_MODALITIES, "AET@host[:port],..." -> DicomModalities allowed C-ECHO and
  C-STORE and nothing else; with DicomAlwaysAllowStore false and DicomCheckModalityHost true (the
  SSM configuration), nothing else can C-STORE.
- The HTTP filter: DEIDFLOW_HTTP_FILTER (the Lua text of deidflow/data/orthanc_http_filter.lua) is
  written where the configuration's LuaScripts names it.

All of it goes into /etc/orthanc/deidflow.json (0600), which the image's configuration generator
merges with ORTHANC_JSON; the secrets are removed from the environment before the image's
entrypoint starts Orthanc. Anything malformed stops the container (ECS reports the task failed),
with a message naming the variable, never a value.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys

PROBE_USER = "deidflow-probe"
PROBE_PATHS = ["/system", "/changes"]
FILTER_PATH = "/tmp/deidflow-http-filter.lua"
CONFIG_PATH = "/etc/orthanc/deidflow.json"
ENTRYPOINT = ["/docker-entrypoint.sh", "/tmp/orthanc.json"]
SENDER_PREFIX = "DEIDFLOW_SENDER_"
DICOMWEB_ROOT = "/dicom-web/"
# User names and passwords go into a JSON file the image runs envsubst over: no "$", no quotes.
_NAME = re.compile(r"^[a-z][a-z0-9-]{1,30}$")
_PASSWORD = re.compile(r"^[A-Za-z0-9]{24,128}$")
_AET = re.compile(r"^[A-Z0-9_-]{1,16}$")
_HOST = re.compile(r"^[0-9]{1,3}(\.[0-9]{1,3}){3}$")


class StartError(Exception):
    """A setting the container cannot start with; the message names it, never its value."""


def users(environ: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """RegisteredUsers (the senders' and the probe's) and the senders' names."""
    found: dict[str, str] = {}
    for name in sorted(k for k in environ if k.startswith(SENDER_PREFIX)):
        try:
            credential = json.loads(environ[name])
            user, password = credential["username"], credential["password"]
        except (ValueError, KeyError, TypeError):
            raise StartError(f"{name} is not a JSON object with username and password") from None
        if not isinstance(user, str) or not _NAME.match(user) or user == PROBE_USER:
            raise StartError(f"{name}: the user name must be 2 to 31 of a-z, 0-9 and -, and not {PROBE_USER}")
        if not isinstance(password, str) or not _PASSWORD.match(password):
            raise StartError(f"{name}: the password must be 24 to 128 letters and digits")
        if user in found:
            raise StartError(f"{name}: another sending system already has this user name")
        found[user] = password
    if not found:
        raise StartError("no sending system: set SendingSystems")
    senders = sorted(found)
    found[PROBE_USER] = secrets.token_hex(24)
    return found, senders


def modalities(text: str) -> dict[str, dict[str, object]]:
    """ "AET@host[:port],..." as DicomModalities: C-ECHO and C-STORE only, from that host only."""
    found: dict[str, dict[str, object]] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        aet, _, address = entry.partition("@")
        host, _, port = address.partition(":")
        if not _AET.match(aet) or not _HOST.match(host) or not (port == "" or port.isdigit()):
            raise StartError("DEIDFLOW_MODALITIES: each entry must be AET@a.b.c.d[:port]")
        name = aet.lower()
        if name in found:
            raise StartError("DEIDFLOW_MODALITIES: an AE title is listed twice")
        found[name] = {
            "AET": aet,
            "Host": host,
            "Port": int(port or 104),
            "AllowEcho": True,
            "AllowStore": True,
            "AllowFind": False,
            "AllowFindWorklist": False,
            "AllowGet": False,
            "AllowMove": False,
            "AllowStorageCommitment": False,
            "AllowTranscoding": False,
        }
    return found


def configuration(environ: dict[str, str]) -> dict[str, object]:
    registered, senders = users(environ)
    config: dict[str, object] = {}
    config["RegisteredUsers"] = registered
    config["DicomModalities"] = modalities(environ.get("DEIDFLOW_MODALITIES", ""))
    config["DeidflowHttpFilter"] = {
        "Senders": senders,
        "Monitors": [PROBE_USER],
        "MonitorPaths": PROBE_PATHS,
        "Readers": [],
        "DicomWebRoot": DICOMWEB_ROOT,
    }
    return config


def write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def main() -> None:
    environ = dict(os.environ)
    try:
        config = configuration(environ)
        lua = environ.get("DEIDFLOW_HTTP_FILTER", "")
        if "function IncomingHttpRequestFilter" not in lua:
            raise StartError("DEIDFLOW_HTTP_FILTER does not hold the HTTP filter")
    except StartError as exc:
        print(f"deidflow: cannot start Orthanc: {exc}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(os.path.dirname(CONFIG_PATH), exist_ok=True)
    write_private(FILTER_PATH, lua)
    write_private(CONFIG_PATH, json.dumps(config))
    registered = config["RegisteredUsers"]
    assert isinstance(registered, dict)
    print(f"deidflow: {len(registered) - 1} sending system(s), health probe user {PROBE_USER}", file=sys.stderr)
    clean = {k: v for k, v in environ.items() if not k.startswith(SENDER_PREFIX) and k != "DEIDFLOW_HTTP_FILTER"}
    os.execve(ENTRYPOINT[0], ENTRYPOINT, clean)


if __name__ == "__main__":
    main()
