"""WADO-RS (PS3.18 10.4): metadata with bulk data references, frames, bulk data, multipart bodies.

Frames are the stored bytes, never re-encoded: a native frame is its slice of Pixel Data, an
encapsulated frame its fragments joined, and the part says which transfer syntax they are in.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from .header import InstanceRecord

OCTET_STREAM = "application/octet-stream"


def instance_url(base: str, record: InstanceRecord) -> str:
    return (
        f"{base}/studies/{record.study_instance_uid}/series/{record.series_instance_uid}"
        f"/instances/{record.sop_instance_uid}"
    )


def instance_metadata(record: InstanceRecord, base: str) -> dict[str, Any]:
    """The instance's DICOM JSON with every bulk reference made an absolute URL on this API."""
    url = instance_url(base, record) + "/bulkdata/"
    return _with_urls(record.json, url)


def _with_urls(data: Mapping[str, Any], url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, element in data.items():
        if "BulkDataURI" in element:
            out[tag] = {"vr": element.get("vr", "UN"), "BulkDataURI": url + element["BulkDataURI"]}
        elif element.get("vr") == "SQ" and element.get("Value"):
            out[tag] = {"vr": "SQ", "Value": [_with_urls(item, url) for item in element["Value"]]}
        else:
            out[tag] = copy.copy(element)
    return out


def bulk_path(record: InstanceRecord, path: str) -> tuple[int | str, ...]:
    """The element path of a bulk reference of this instance (tags and item numbers); KeyError
    when the instance's metadata has no such reference (so nothing else can be read this way)."""
    if path not in _references(record.json):
        raise KeyError(path)
    parts: list[int | str] = []
    for i, part in enumerate(path.split(".")):
        parts.append(int(part, 16) if i % 2 == 0 else int(part))
    return tuple(parts)


def _references(data: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for element in data.values():
        if "BulkDataURI" in element:
            found.add(str(element["BulkDataURI"]))  # stored as the element's full path
        elif element.get("vr") == "SQ":
            for item in element.get("Value") or ():
                found |= _references(item)
    return found


def parse_frame_list(text: str, number_of_frames: int) -> list[int]:
    """'1,3,5' -> [1, 3, 5]; ValueError with a reason for anything that is not a frame here."""
    frames: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"frame numbers are positive integers separated by commas, not {part!r}")
        number = int(part)
        if not 1 <= number <= number_of_frames:
            raise LookupError(f"frame {number} is outside 1..{number_of_frames}")
        frames.append(number)
    return frames


def accepted_transfer_syntax(accept: str, stored: str) -> bool:
    """Whether an Accept header of a frames request takes the stored transfer syntax (no transcoding
    here): absent, `*/*`, `transfer-syntax=*`, no transfer-syntax parameter, or the stored one."""
    if not accept.strip():
        return True
    for option in accept.split(","):
        params = {}
        media, *rest = option.split(";")
        for param in rest:
            name, _, value = param.strip().partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        syntax = params.get("transfer-syntax")
        if media.strip() in ("*/*", "multipart/related") and syntax in (None, "*", stored):
            return True
    return False


def multipart_related(parts: Iterable[bytes], part_type: str, *, type_param: str) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart/related answer (RFC 2387) whose parts are `part_type`.

    The boundary is derived from the content, so a retried request gets byte-identical answers.
    """
    chunks = list(parts)
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(hashlib.sha256(chunk).digest())
    boundary = "deidflow-" + digest.hexdigest()[:32]
    body = bytearray()
    for chunk in chunks:
        body += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode("ascii")
        body += chunk
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode("ascii")
    return bytes(body), f'multipart/related; type="{type_param}"; boundary={boundary}'


def frame_part_type(transfer_syntax: str) -> str:
    return f"{OCTET_STREAM}; transfer-syntax={transfer_syntax}"
