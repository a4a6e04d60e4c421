"""Objects too large to hold, through a small function: the header in, the pixels copied by S3.

An original above STREAM_OBJECTS_ABOVE is not downloaded. Its header (a prefix, grown until the
top-level Pixel Data element is in it) and whatever follows native Pixel Data are fetched with
ranged GETs into a sparse file of the object's size, at their own offsets, so that the engine reads
it as the whole file while the pixels are a hole it never reads (they are a deferred value, kept as
they are: see parts.py). The output is a multipart upload whose pixel parts S3 copies from the
original version (UploadPartCopy with a byte range); only the new header and a few MiB around it
are uploaded.

Encapsulated Pixel Data is read once, as a stream: the framing walk needs every fragment's item
header and intake the first bytes of each frame's codestream, which are kept at their offsets while
the rest of each fragment goes by, held neither in memory nor in /tmp.

If the engine needed the pixels after all (a scan for burned-in text, a transcode, an overlay in
their unused bits, trailing padding cut off, a syntax the fast writer does not cover), its output
names no span of the hole, and the object is downloaded whole (into /tmp, streamed: memory stays
bounded) and processed again. Only the output's upload still copies its untouched values from the
original.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..engine import Engine, ProcessedInstance
from ..framing import ITEM, SEQUENCE_DELIMITER, find_pixel_data
from ..intake import CODESTREAM_HEAD_BYTES
from ..parts import CopyPart, Part, SourceSpan, UploadPart, multipart_plan
from ..rejection import Rejected
from ..tags import UNDEFINED_LENGTH
from .objects import ObjectRef

STREAM_OBJECTS_ABOVE = 64 * 1024**2  # below this an object is simply downloaded and held
HEADER_PREFIX = 1024**2  # the first ranged GET; grown fourfold while Pixel Data is not in it
MAX_HEADER = 64 * 1024**2  # a header longer than this (or no Pixel Data at all): download it whole
MAX_TAIL = 64 * 1024**2  # likewise for what follows the pixels
COPY_THREADS = 4


@dataclass(frozen=True)
class SourceCopy:
    """A local copy of an original version: whole, or sparse with the pixels left out (`hole`)."""

    path: str
    size: int
    etag: str
    hole: SourceSpan | None  # where the pixels are in the object, and not in the file


def needs_streaming(size: int) -> bool:
    return size > STREAM_OBJECTS_ABOVE


def _version_args(ref: ObjectRef) -> dict[str, Any]:
    args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id:
        args["VersionId"] = ref.version_id
    return args


def _get_range(s3: Any, ref: ObjectRef, start: int, end: int) -> tuple[bytes, str]:
    """Bytes [start, end) of the original version, and its ETag."""
    answer = s3.get_object(**_version_args(ref), Range=f"bytes={start}-{end - 1}")
    data = answer["Body"].read()
    if len(data) != end - start:
        raise OSError("a ranged read of the original came back short")
    return data, str(answer.get("ETag", ""))


@contextmanager
def sparse_copy(s3: Any, ref: ObjectRef, size: int) -> Iterator[SourceCopy]:
    """The original as a sparse file (header and tail only) when it has native Pixel Data, else
    downloaded whole; removed afterwards."""
    fd, path = tempfile.mkstemp(suffix=".dcm")
    try:
        with os.fdopen(fd, "r+b") as fh:
            fh.truncate(size)
            hole, etag = _fetch_around_pixels(s3, ref, size, fh)
            if hole is None:
                fh.seek(0)
                fh.truncate(0)
                etag = _download_whole(s3, ref, fh)
        yield SourceCopy(path, size, etag, hole)
    finally:
        os.unlink(path)


@contextmanager
def whole_copy(s3: Any, ref: ObjectRef, size: int) -> Iterator[SourceCopy]:
    """The original downloaded whole (streamed to /tmp: memory stays bounded); removed afterwards."""
    if shutil.disk_usage(tempfile.gettempdir()).free < size:
        raise Rejected(
            "too_large", f"{size} bytes must be read whole here (its pixels are needed) and /tmp has less room"
        )
    fd, path = tempfile.mkstemp(suffix=".dcm")
    try:
        with os.fdopen(fd, "wb") as fh:
            etag = _download_whole(s3, ref, fh)
        yield SourceCopy(path, size, etag, None)
    finally:
        os.unlink(path)


def _download_whole(s3: Any, ref: ObjectRef, fh: Any) -> str:
    answer = s3.get_object(**_version_args(ref))
    body = answer["Body"]
    while chunk := body.read(8 * 1024**2):
        fh.write(chunk)
    return str(answer.get("ETag", ""))


def _fetch_around_pixels(s3: Any, ref: ObjectRef, size: int, fh: Any) -> tuple[SourceSpan | None, str]:
    """Fetch the header and the tail into `fh` at their offsets; the pixels' span, or None when
    the object must be downloaded whole."""
    have, etag = b"", ""
    wanted = min(size, HEADER_PREFIX)
    while True:
        more, etag = _get_range(s3, ref, len(have), wanted)
        have += more
        start = find_pixel_data(have)
        if start is not None or wanted >= min(size, MAX_HEADER):
            break
        wanted = min(size, wanted * 4, MAX_HEADER)
    if start is None:
        return None, etag  # no Pixel Data in reach: the walk of the whole file says why
    fh.seek(0)
    fh.write(have[: start.value])
    if start.length == UNDEFINED_LENGTH:
        return _fetch_fragment_headers(s3, ref, size, start.value, etag, fh)
    end = start.value + start.length
    if end > size or size - end > MAX_TAIL:
        return None, etag
    if end < size:
        tail, tail_etag = _get_range(s3, ref, end, size)
        if tail_etag != etag:
            raise OSError("the original changed between two ranged reads")
        fh.seek(end)
        fh.write(tail)
    return SourceSpan(start.value, start.length), etag


def _fetch_fragment_headers(
    s3: Any, ref: ObjectRef, size: int, value: int, etag: str, fh: Any
) -> tuple[SourceSpan | None, str]:
    """Encapsulated Pixel Data: read once as a stream from `value` to the end, keeping what the
    framing walk and intake's checks read (the Basic Offset Table, each item's header and the first
    CODESTREAM_HEAD_BYTES of each fragment, where a frame's codestream declares its size, and what
    follows the sequence delimiter) at their offsets; the rest of each fragment goes by, unkept."""
    answer = s3.get_object(**_version_args(ref), Range=f"bytes={value}-{size - 1}")
    if str(answer.get("ETag", "")) != etag:
        raise OSError("the original changed between two ranged reads")
    body = answer["Body"]
    at = value

    def read(count: int) -> bytes:
        nonlocal at
        data = body.read(count)
        while len(data) < count and (more := body.read(count - len(data))):
            data += more
        fh.seek(at)
        fh.write(data)
        at += len(data)
        return data

    def skip(count: int) -> None:
        nonlocal at
        while count:
            data = body.read(min(count, 1024**2))
            if not data:
                return
            count -= len(data)
            at += len(data)

    first = True
    while True:
        header = read(8)
        if len(header) < 8:
            return None, etag  # cut short: the walk of the whole file says where
        group, element, length = struct.unpack("<HHL", header)
        tag = group << 16 | element
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM or length == UNDEFINED_LENGTH or at + length > size or (first and length > MAX_HEADER):
            return None, etag
        kept = read(length if first else min(length, CODESTREAM_HEAD_BYTES))
        skip(length - len(kept))
        first = False
    items_end = at - 8
    if size - at > MAX_TAIL:
        return None, etag
    read(size - at)  # whatever follows Pixel Data
    return SourceSpan(value, items_end - value), etag


# What a sparse copy's hole can cause when something reads the pixels after all (zeros do not
# decode, transcode or trust as the real pixels do): tried again on the whole object.
_MAYBE_FROM_THE_HOLE = frozenset({"pixels_failed", "pixels_untrusted", "transcode_failed", "unparseable", "unwritable"})


@contextmanager
def processed_original(
    s3: Any, engine: Engine, ref: ObjectRef, size: int, *, scan_pixels: bool
) -> Iterator[tuple[ProcessedInstance, SourceCopy]]:
    """The engine's output for a large original and the copy its spans refer to (valid inside the
    block): from the sparse copy when the engine left the pixels alone, else from the whole object.
    A scan for burned-in text needs the pixels: that goes straight to the whole object."""
    if not scan_pixels:
        with sparse_copy(s3, ref, size) as copy:
            try:
                processed: ProcessedInstance | None = engine.process(copy.path, scan_pixels=False, stream=True)
            except Rejected as rejected:
                if copy.hole is None or rejected.reason not in _MAYBE_FROM_THE_HOLE:
                    raise
                processed = None
            if processed is not None and pixels_untouched(processed.parts, copy):
                yield processed, copy
                return
    with whole_copy(s3, ref, size) as copy:
        yield engine.process(copy.path, scan_pixels=scan_pixels, stream=True), copy


@dataclass(frozen=True)
class Output:
    """What a reading step writes: the engine's output and, for a large original, the copy its
    spans name (valid while the step's `with` block runs) and the version it is a copy of."""

    processed: ProcessedInstance
    copy: SourceCopy | None = None
    origin: ObjectRef | None = None

    @property
    def size(self) -> int:
        return self.processed.size

    def digest(self) -> str:
        """What the claim on its SOP Instance UID compares: two outputs with the same digest are
        the same bytes (see output_digest for a streamed one)."""
        if self.copy is None:
            return hashlib.sha256(self.processed.data).hexdigest()
        return output_digest(self.processed.parts, self.copy)

    def put(self, s3: Any, *, bucket: str, key: str, content_type: str = "application/dicom") -> dict[str, Any]:
        """Write it to bucket/key: one PutObject, or for a large original a multipart upload whose
        untouched values S3 copies from it."""
        if self.copy is None or self.origin is None:
            return dict(s3.put_object(Bucket=bucket, Key=key, Body=self.processed.data, ContentType=content_type))
        return upload_streamed(
            s3, self.origin, self.copy, self.processed.parts, bucket=bucket, key=key, content_type=content_type
        )


def copy_object(s3: Any, *, source: ObjectRef, size: int, bucket: str, key: str, content_type: str) -> dict[str, Any]:
    """CopyObject, which S3 refuses above 5 GiB: larger objects are copied part by part."""
    if size <= 5 * 1024**3:
        args = {
            "Bucket": source.bucket,
            "Key": source.key,
            **({"VersionId": source.version_id} if source.version_id else {}),
        }
        return dict(
            s3.copy_object(
                CopySource=args, Bucket=bucket, Key=key, ContentType=content_type, MetadataDirective="REPLACE"
            )
        )
    etag = str(s3.head_object(**_version_args(source))["ETag"])
    copy = SourceCopy("", size, etag, SourceSpan(0, size))
    return upload_streamed(s3, source, copy, [SourceSpan(0, size)], bucket=bucket, key=key, content_type=content_type)


def pixels_untouched(parts: list[Part], copy: SourceCopy) -> bool:
    """The output copies the hole whole from the original: the engine never read the pixels."""
    return copy.hole is None or copy.hole in parts


def output_digest(parts: list[Part], copy: SourceCopy) -> str:
    """A SHA-256 that stands for the output's bytes: of the bytes themselves, and for a span of
    the original, of where it lies in a version with that ETag (the same ETag, the same bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, SourceSpan):
            digest.update(f"\0span:{copy.etag}:{part.offset}:{part.length}\0".encode())
        else:
            digest.update(part)
    return digest.hexdigest()


def upload_streamed(
    s3: Any, ref: ObjectRef, copy: SourceCopy, parts: list[Part], *, bucket: str, key: str, content_type: str
) -> dict[str, Any]:
    """Write `parts` to bucket/key as a multipart upload: spans of the original copied by S3 where
    they are long enough, the rest uploaded. Aborted on any failure: nothing partial stays."""
    plan = multipart_plan(parts)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType=content_type)["UploadId"]
    source = {"Bucket": ref.bucket, "Key": ref.key, **({"VersionId": ref.version_id} if ref.version_id else {})}

    def send(numbered: tuple[int, UploadPart | CopyPart]) -> dict[str, Any]:
        number, part = numbered
        common = {"Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": number}
        if isinstance(part, CopyPart):
            span = part.span
            answer = s3.upload_part_copy(
                **common,
                CopySource=source,
                CopySourceRange=f"bytes={span.offset}-{span.offset + span.length - 1}",
                CopySourceIfMatch=copy.etag,  # the version read, and no other bytes
            )
            return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}
        body = b"".join(_piece(s3, ref, copy, piece) for piece in part.pieces)
        return {"PartNumber": number, "ETag": s3.upload_part(**common, Body=body)["ETag"]}

    try:
        numbered = list(enumerate(plan, start=1))
        with ThreadPoolExecutor(COPY_THREADS) as pool:
            # Uploads hold their bytes while they go: at most COPY_THREADS parts of UPLOAD_PART.
            done = list(pool.map(send, numbered))
        return dict(
            s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done})
        )
    except BaseException:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise


def _piece(s3: Any, ref: ObjectRef, copy: SourceCopy, piece: Part) -> bytes:
    if not isinstance(piece, SourceSpan):
        return piece
    hole = copy.hole
    if hole is not None and piece.offset < hole.offset + hole.length and hole.offset < piece.offset + piece.length:
        data, etag = _get_range(s3, ref, piece.offset, piece.offset + piece.length)
        if etag != copy.etag:
            raise OSError("the original changed between two ranged reads")
        return data
    with open(copy.path, "rb") as fh:  # in the local copy: the header, the tail, or all of it
        fh.seek(piece.offset)
        return fh.read(piece.length)
