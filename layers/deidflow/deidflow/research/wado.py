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


# PS3.18 Table 8.7.3-5: the media type of a compressed frame's bytes, by transfer syntax. Native
# (and any other) frames are application/octet-stream.
_FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


def frame_media_type(stored: str) -> str:
    return _FRAME_MEDIA_TYPES.get(stored, OCTET_STREAM)


def accepted_frame_type(accept: str, stored: str) -> str | None:
    """The part media type to answer a frames request with, or None (406: no transcoding here).

    Frames are served as stored. An Accept option takes them when its media type (a multipart's
    `type` parameter) is `*/*`, the stored syntax's own media type (image/jpeg for JPEG, ...), or
    application/octet-stream, and its transfer-syntax is absent, `*` or the stored one; except that
    application/octet-stream without a transfer-syntax means Explicit VR Little Endian (PS3.18
    8.7.3.5.2), so it takes native frames only. No Accept at all takes them as stored."""
    natural = frame_media_type(stored)
    if not accept.strip():
        return natural
    for option in accept.split(","):
        params: dict[str, str] = {}
        media, *rest = option.split(";")
        for param in rest:
            name, _, value = param.strip().partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        media = media.strip().lower()
        if media == "multipart/related":
            media = params.get("type", "*/*").lower()
        elif media != "*/*":
            continue  # a single-part frame answer is not offered
        syntax = params.get("transfer-syntax")
        if syntax not in (None, "*", stored):
            continue
        if media in ("*/*", natural):
            return natural
        if media == OCTET_STREAM and (syntax is not None or natural == OCTET_STREAM):
            return OCTET_STREAM
    return None


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


def frame_part_type(transfer_syntax: str, media_type: str = OCTET_STREAM) -> str:
    return f"{media_type}; transfer-syntax={transfer_syntax}"
