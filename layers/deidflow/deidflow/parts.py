"""An output file as pieces: encoded bytes, and spans of the source file copied without being read.

Why: the header pass changes a few kilobytes of a file whose Pixel Data (and other large binary
values) it keeps as they are. Holding those values to write them again is what made memory grow
with the file (a 1 GiB MR took 1.08 GB) and was a fifth of the time per CT slice. The reader leaves
them in the source (pydicom's deferred values), the writer names them as `SourceSpan`s, and they
go from the source to the destination by the kernel (`copy_file_range`), or in the cloud by S3
itself (`UploadPartCopy`), never through the process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import BinaryIO, NamedTuple

COPY_CHUNK = 1 << 30  # bytes per copy_file_range call (the kernel caps a call near 2 GiB)
READ_CHUNK = 1 << 20  # the buffer of the fallback copy, and of reading a span into memory


class SourceSpan(NamedTuple):
    """`length` bytes of the source file from `offset`, to be copied into the output unchanged."""

    offset: int
    length: int


Part = bytes | SourceSpan


class SourceChanged(OSError):
    """The source file is not the one that was read (replaced, rewritten or cut since)."""


class SourceFile(NamedTuple):
    """The file spans are copied from, as it was when it was read: a file replaced or rewritten
    since (a sync tool renaming a new copy into place) must not lend its bytes to an output
    decided on the old one."""

    path: str
    device: int
    inode: int
    size: int
    modified_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> SourceFile:
        st = os.stat(path)
        return cls(os.fspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def open(self) -> BinaryIO:
        fh = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
        st = os.fstat(fh.fileno())
        if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != self[1:]:
            fh.close()
            raise SourceChanged("the source file changed after it was read")
        return fh


def output_size(parts: Iterable[Part]) -> int:
    return sum(part.length if isinstance(part, SourceSpan) else len(part) for part in parts)


def has_spans(parts: Iterable[Part]) -> bool:
    return any(isinstance(part, SourceSpan) for part in parts)


def write_parts(out: BinaryIO, parts: Sequence[Part], source: SourceFile | None) -> None:
    """Write `parts` to the open file `out`, copying spans from `source` (which must be given when
    there are spans, and must not have changed since it was read)."""
    if not has_spans(parts):
        out.writelines(parts)  # type: ignore[arg-type]  # all bytes: checked above
        return
    if source is None:
        raise ValueError("the output names spans of a source file, and no source was given")
    with source.open() as src:
        for part in parts:
            if isinstance(part, SourceSpan):
                out.flush()  # what is buffered goes first: the copy writes at the file's position
                _copy_span(src, out, part)
            else:
                out.write(part)


def join_parts(parts: Sequence[Part], source: SourceFile | None) -> bytes:
    """The whole output in memory (small files, and readers that need bytes)."""
    if not has_spans(parts):
        return b"".join(parts)  # type: ignore[arg-type]  # all bytes: checked above
    if source is None:
        raise ValueError("the output names spans of a source file, and no source was given")
    pieces: list[bytes] = []
    with source.open() as src:
        for part in parts:
            pieces.append(read_span(src, part) if isinstance(part, SourceSpan) else part)
    return b"".join(pieces)


def read_span(src: BinaryIO, span: SourceSpan) -> bytes:
    """The span's bytes; a source shorter than the span (changed since it was read) is an error."""
    src.seek(span.offset)
    data = src.read(span.length)
    if len(data) != span.length:
        raise OSError("the source file is shorter than when it was read")
    return data


def _copy_span(src: BinaryIO, out: BinaryIO, span: SourceSpan) -> None:
    offset, left = span.offset, span.length
    in_fd, out_fd = src.fileno(), out.fileno()
    while left:
        try:
            done = os.copy_file_range(in_fd, out_fd, min(left, COPY_CHUNK), offset)
        except (AttributeError, OSError):  # no copy_file_range here, or not between these files
            _copy_by_reading(src, out, offset, left)
            return
        if done == 0:
            raise OSError("the source file is shorter than when it was read")
        offset += done
        left -= done
    out.seek(0, os.SEEK_END)  # copy_file_range moved the descriptor's position; keep the file object's in step


def _copy_by_reading(src: BinaryIO, out: BinaryIO, offset: int, length: int) -> None:
    out.seek(0, os.SEEK_END)
    src.seek(offset)
    while length:
        data = src.read(min(length, READ_CHUNK))
        if not data:
            raise OSError("the source file is shorter than when it was read")
        out.write(data)
        length -= len(data)


# -- the same output as an S3 multipart upload -------------------------------------------------------

MIN_PART = 5 * 1024**2  # S3: every part but the last holds at least 5 MiB
UPLOAD_PART = 8 * 1024**2  # what an uploaded part holds at most (bar one piece): the memory it takes
COPY_PART = 512 * 1024**2  # a server-side copy part (S3 allows 5 GiB); several are copied at once


class UploadPart(NamedTuple):
    """A part whose bytes pass through the process: encoded bytes, and short spans read from the
    source (a ranged GET each)."""

    pieces: tuple[Part, ...]

    @property
    def size(self) -> int:
        return output_size(self.pieces)


class CopyPart(NamedTuple):
    """A part S3 copies from the source object itself (UploadPartCopy with a byte range)."""

    span: SourceSpan

    @property
    def size(self) -> int:
        return self.span.length


def multipart_plan(parts: Sequence[Part], *, min_part: int = MIN_PART) -> list[UploadPart | CopyPart]:
    """The output as multipart-upload parts, with as many of its bytes as possible copied by S3.

    A span long enough to leave at least `min_part` after lending the part before it what that
    part lacks of `min_part` becomes copy parts; everything else is uploaded, in parts of at most
    about UPLOAD_PART. Every part but the last holds at least `min_part`."""
    plan: list[UploadPart | CopyPart] = []
    pending: list[Part] = []
    pending_size = 0

    def flush() -> None:
        nonlocal pending, pending_size
        if pending:
            plan.append(UploadPart(tuple(pending)))
        pending, pending_size = [], 0

    def add(piece: Part, size: int) -> None:
        nonlocal pending_size
        pending.append(piece)
        pending_size += size
        if pending_size >= max(UPLOAD_PART, min_part):
            flush()

    for part in parts:
        if not isinstance(part, SourceSpan):
            add(part, len(part))
            continue
        lent = min_part - pending_size if 0 < pending_size < min_part else 0  # what the part before lacks
        if part.length - lent >= min_part:
            if lent:
                pending.append(SourceSpan(part.offset, lent))
            flush()
            rest = SourceSpan(part.offset + lent, part.length - lent)
            count = -(-rest.length // COPY_PART)
            size = -(-rest.length // count)  # equal parts: none ends up under min_part
            for start in range(0, rest.length, size):
                plan.append(CopyPart(SourceSpan(rest.offset + start, min(size, rest.length - start))))
            continue
        for start in range(0, part.length, UPLOAD_PART):
            piece = SourceSpan(part.offset + start, min(UPLOAD_PART, part.length - start))
            add(piece, piece.length)
    flush()
    return plan
