"""The research API's audit trail, as data: one record per request, and the hash-chained segments
the records are sealed into. Pure: no AWS call here (`deidflow.cloud.audit` reads and writes them).

A record is written to DynamoDB before the API answers, so it is queryable at once; a scheduled
sealer then copies every record, once, into a JSON-lines segment in an Object Lock bucket. Each
segment's header holds the SHA-256 of the segment before it, and the chain head (in an SSM
parameter) holds the last one's, so editing, removing or reordering a sealed record, or deleting a
segment, shows in `verify_chain`. Records carry who asked, what they asked and which pseudonymous
UIDs they got; never a header value.
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

# Fixed width, so that string order is time order: DynamoDB sort keys and segment windows compare
# these as strings.
_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_SEGMENT_KEY = re.compile(r"segments/(\d{4})/(\d{2})/(\d{2})/(\d{12})\.jsonl")
SEGMENT_PREFIX = "segments/"
EMPTY_HEAD = "{}"  # the head parameter's value before the first segment


def format_ts(moment: datetime) -> str:
    """ISO 8601 UTC with milliseconds and Z (2026-12-02T07:01:02.345Z); truncated, not rounded,
    so a timestamp never moves past the moment it describes."""
    if moment.tzinfo is None:
        raise ValueError("audit timestamps need an aware datetime (a naive one has no zone to convert from)")
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_ts(ts: str) -> datetime:
    check_ts(ts)
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%f%z")


def check_ts(ts: str, what: str = "ts") -> None:
    if not isinstance(ts, str) or not _TS.fullmatch(ts):
        raise ValueError(f"{what} must look like 2026-12-02T07:01:02.345Z")


@dataclass(frozen=True)
class AuditRecord:
    """One research API request. `query` is the normalised query string as the API parsed it: its
    values are what the researcher typed against de-identified data (pseudonymous UIDs, shifted
    dates), never a value read from a header."""

    ts: str  # ISO 8601 UTC with milliseconds and Z, e.g. 2026-12-02T07:01:02.345Z
    request_id: str
    sub: str  # the token's subject
    username: str
    groups: tuple[str, ...]
    client_id: str
    source_ip: str
    user_agent: str
    profiles: tuple[str, ...]  # permission profiles that applied
    profiles_version: str  # sha256 hex of the profiles file
    action: str  # qido.studies, qido.series, qido.instances, wado.metadata, wado.frames, ..., research.me
    query: str  # the normalised query (sorted key=value&...), "" when none
    studies: tuple[str, ...] = ()  # Study UIDs returned or read
    series: tuple[str, ...] = ()
    instance: str | None = None  # the SOP Instance UID read, for instance-level actions
    frames: tuple[int, ...] = ()
    count: int = 0  # results returned
    bytes: int = 0  # response body bytes
    status: int = 200

    def __post_init__(self) -> None:
        check_ts(self.ts)
        if not self.request_id:
            raise ValueError("an audit record needs a request_id (it is half of the record's key)")
        # Callers build records from JSON and lists; the record stays hashable and its canonical
        # form the same whichever sequence type they used.
        for name in ("groups", "profiles", "studies", "series"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        object.__setattr__(self, "frames", tuple(int(v) for v in self.frames))

    @property
    def month(self) -> str:
        return self.ts[:7]

    @property
    def day(self) -> str:
        return self.ts[:10]

    @property
    def sort_key(self) -> str:
        return f"{self.ts}#{self.request_id}"

    def to_dict(self) -> dict[str, Any]:
        """Every field, tuples as lists: the record's JSON form (segments, `audit query`)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown audit record fields: {', '.join(sorted(unknown))}")
        return cls(**dict(data))

    def canonical(self) -> builtins.bytes:  # the field `bytes` shadows the type in this class
        """The bytes that are sealed: JSON, sorted keys, no whitespace, ASCII only (so the same
        record is the same bytes on every machine and every Python)."""
        return canonical_json(self.to_dict())

    def to_item(self) -> dict[str, Any]:
        """A DynamoDB item for boto3's Table resource. Keys: `pk` (one partition per user and month:
        "what did this user see"), `sk` (time order, unique per request), `day` (the by_day index:
        "who looked at this study", and what the sealer reads). Empty tuples and a None instance are
        left out; the numbers are ints (the Table resource refuses floats)."""
        item: dict[str, Any] = {"pk": f"u#{self.sub}#{self.month}", "sk": self.sort_key, "day": self.day}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if value:
                    item[f.name] = list(value)
            elif value is not None:
                item[f.name] = value
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> AuditRecord:
        """The inverse of `to_item`, from what boto3 returns (numbers as Decimal)."""
        data: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in item:
                continue
            value = item[f.name]
            if f.name == "frames":
                data[f.name] = tuple(_as_int(v) for v in value)
            elif f.name in ("count", "bytes", "status"):
                data[f.name] = _as_int(value)
            elif isinstance(value, list | tuple | set):
                data[f.name] = tuple(value)
            else:
                data[f.name] = value
        for name in ("groups", "profiles"):  # fields without a default, left out when empty
            data.setdefault(name, ())
        record = cls(**data)
        # An item whose key disagrees with its fields was edited in the table: reading it on would
        # seal a record under a window it was not queried for.
        if item.get("sk", record.sort_key) != record.sort_key or item.get("day", record.day) != record.day:
            raise ValueError("the audit item's key does not match its ts and request_id")
        return record


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise ValueError("expected an integer, got a fraction")
    return int(value)


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def record_order(record: AuditRecord) -> tuple[str, str, bytes]:
    """(ts, request_id), then the bytes themselves: a total order, so sealing is deterministic even
    if two records ever shared a request id."""
    return record.ts, record.request_id, record.canonical()


# -- segments and the chain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainHead:
    """The last sealed segment: kept in an SSM parameter, outside the bucket, so rewriting the
    bucket's tail cannot also rewrite the hash it must end with."""

    seq: int
    key: str
    sha256: str
    window_end: str

    def to_json(self) -> str:
        return canonical_json(
            {"seq": self.seq, "key": self.key, "sha256": self.sha256, "window_end": self.window_end}
        ).decode("ascii")

    @classmethod
    def from_json(cls, text: str) -> ChainHead:
        head = parse_head(text)
        if head is None:
            raise ValueError("the chain head is empty: no segment has been sealed yet")
        return head


def parse_head(text: str) -> ChainHead | None:
    """The head parameter's value: `{}` (nothing sealed yet) gives None."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the chain head is not a JSON object")
    if not data:
        return None
    try:
        head = ChainHead(
            seq=int(data["seq"]), key=str(data["key"]), sha256=str(data["sha256"]), window_end=str(data["window_end"])
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the chain head is malformed ({exc})") from None
    check_ts(head.window_end, "the head's window_end")
    return head


@dataclass(frozen=True)
class Segment:
    key: str
    data: bytes  # the object's bytes, as written
    sha256: str  # hex digest of `data`
    head: ChainHead  # the chain head once this segment is written
    count: int


def segment_key(seq: int, window_end: str) -> str:
    """segments/<yyyy>/<mm>/<dd>/<seq:012d>.jsonl, dated by the window's end."""
    check_ts(window_end, "window_end")
    return f"{SEGMENT_PREFIX}{window_end[0:4]}/{window_end[5:7]}/{window_end[8:10]}/{seq:012d}.jsonl"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seal_segment(
    records: Iterable[AuditRecord], previous: ChainHead | None, window_start: str, window_end: str
) -> Segment:
    """The segment after `previous` holding `records`, all of which have window_start <= ts <
    window_end. Deterministic: the same records and head give the same bytes, so a rerun after a
    crash writes the segment it had already written, not a second version of it."""
    check_ts(window_start, "window_start")
    check_ts(window_end, "window_end")
    if not window_start < window_end:
        raise ValueError("a segment's window must end after it starts")
    if previous is not None and window_start != previous.window_end:
        # Windows are contiguous, so verification can tell a gap from a quiet hour.
        raise ValueError("a segment's window must start where the previous one ended")
    ordered = sorted(records, key=record_order)
    outside = [r for r in ordered if not window_start <= r.ts < window_end]
    if outside:
        raise ValueError(f"{len(outside)} record(s) fall outside the window [{window_start}, {window_end})")
    seq = 1 if previous is None else previous.seq + 1
    header = {
        "segment": seq,
        "previous_sha256": None if previous is None else previous.sha256,
        "window": [window_start, window_end],
        "count": len(ordered),
    }
    data = b"".join(line + b"\n" for line in [canonical_json(header), *(r.canonical() for r in ordered)])
    key = segment_key(seq, window_end)
    digest = sha256_hex(data)
    return Segment(key=key, data=data, sha256=digest, head=ChainHead(seq, key, digest, window_end), count=len(ordered))


class SegmentError(ValueError):
    """A segment's bytes cannot be read as a segment (the message names what, never a record's content)."""


@dataclass(frozen=True)
class ParsedSegment:
    seq: int
    previous_sha256: str | None
    window_start: str
    window_end: str
    count: int  # what the header says
    records: tuple[AuditRecord, ...]  # what the lines hold


def parse_segment(data: bytes) -> ParsedSegment:
    if not data.endswith(b"\n"):
        raise SegmentError("does not end with a newline (truncated?)")
    lines = data[:-1].split(b"\n")
    try:
        header = json.loads(lines[0])
        seq = header["segment"]
        previous = header["previous_sha256"]
        start, end = header["window"]
        count = header["count"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SegmentError(f"unreadable header ({type(exc).__name__})") from None
    if not isinstance(seq, int) or not isinstance(count, int) or not (previous is None or isinstance(previous, str)):
        raise SegmentError("malformed header")
    try:
        check_ts(start, "window start")
        check_ts(end, "window end")
    except ValueError as exc:
        raise SegmentError(f"malformed header: {exc}") from None
    records = []
    for number, line in enumerate(lines[1:], start=2):
        try:
            records.append(AuditRecord.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            raise SegmentError(f"line {number} is not an audit record ({type(exc).__name__})") from None
    return ParsedSegment(seq, previous, start, end, count, tuple(records))


# -- verification -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    segment: str  # the segment's key, or "segment <seq>" for one that is missing
    message: str

    def __str__(self) -> str:
        return f"{self.segment}: {self.message}"


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    head: ChainHead | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.head is None:
            chain = "no segment sealed yet"
        else:
            chain = f"{self.segments} segment(s), {self.records} record(s), sealed up to {self.head.window_end}"
        if self.ok:
            return f"audit chain intact: {chain}"
        return f"audit chain NOT intact: {len(self.problems)} problem(s); {chain}"


def verify_chain(segments: Mapping[str, bytes] | Iterable[tuple[str, bytes]], head: ChainHead | None) -> VerifyReport:
    """Every problem with the chain from segment 1 to `head`: edited bytes (a hash that no longer
    matches the next segment's header or the head), missing segments (a gap in seq numbers or
    windows, the head's segment absent), header counts that do not match the lines, records out of
    order or out of their window, and segments past the head."""
    pairs: Sequence[tuple[str, bytes]] = list(segments.items() if isinstance(segments, Mapping) else segments)
    report = VerifyReport(head=head)
    problems = report.problems
    # An unreadable segment keeps its place (its number is in its key): the hashes around it can
    # still be checked, and it is not also reported as missing.
    by_seq: dict[int, list[tuple[str, bytes, ParsedSegment | None]]] = {}

    for key, data in sorted(pairs):
        match = _SEGMENT_KEY.fullmatch(key)
        if not match:
            problems.append(Problem(key, "not a segment key (segments/<yyyy>/<mm>/<dd>/<seq>.jsonl)"))
            continue
        seq = int(match.group(4))
        report.segments += 1
        parsed: ParsedSegment | None
        try:
            parsed = parse_segment(data)
        except SegmentError as exc:
            problems.append(Problem(key, f"unreadable: {exc}"))
            parsed = None
        else:
            report.records += len(parsed.records)
            problems.extend(Problem(key, message) for message in _segment_problems(key, seq, parsed))
        by_seq.setdefault(seq, []).append((key, data, parsed))

    for seq, copies in sorted(by_seq.items()):
        if len(copies) > 1:
            keys = ", ".join(key for key, _, _ in copies)
            problems.extend(Problem(key, f"segment {seq} appears under several keys ({keys})") for key, _, _ in copies)

    last = 0 if head is None else head.seq
    for seq in sorted(by_seq):
        if seq > last:
            for key, _, _ in by_seq[seq]:
                problems.append(Problem(key, "past the chain head (written after it, or the head was rolled back)"))
    for seq in range(1, last + 1):
        if seq not in by_seq:
            problems.append(Problem(f"segment {seq:012d}", "missing (deleted, or never written)"))
            continue
        key, data, parsed = by_seq[seq][0]
        if parsed is None:
            continue  # what it says about its predecessor cannot be read
        if seq == 1:
            if parsed.previous_sha256 is not None:
                problems.append(Problem(key, "the first segment names a previous one"))
        elif seq - 1 in by_seq:
            before_key, before_data, before = by_seq[seq - 1][0]
            if parsed.previous_sha256 != sha256_hex(before_data):
                problems.append(Problem(before_key, f"its bytes do not match the hash segment {seq} recorded (edited)"))
            if before is not None and parsed.window_start != before.window_end:
                message = f"its window starts at {parsed.window_start}, the previous one ended at {before.window_end}"
                problems.append(Problem(key, message))

    if head is not None and head.seq in by_seq:
        key, data, parsed = by_seq[head.seq][0]
        if key != head.key:
            problems.append(Problem(key, f"the chain head names {head.key} for this segment"))
        if sha256_hex(data) != head.sha256:
            problems.append(Problem(key, "its bytes do not match the chain head's hash (edited)"))
        if parsed is not None and parsed.window_end != head.window_end:
            message = f"its window ends at {parsed.window_end}, the chain head's at {head.window_end}"
            problems.append(Problem(key, message))
    return report


def _segment_problems(key: str, seq: int, parsed: ParsedSegment) -> list[str]:
    """What is wrong inside one segment, by itself."""
    found = []
    if parsed.seq != seq:
        found.append(f"its header says segment {parsed.seq}")
    if key != segment_key(seq, parsed.window_end):
        found.append("its key does not match its window's end")
    if parsed.count != len(parsed.records):
        found.append(f"its header counts {parsed.count} record(s), it holds {len(parsed.records)}")
    if not parsed.window_start < parsed.window_end:
        found.append("its window is empty or reversed")
    outside = sum(1 for r in parsed.records if not parsed.window_start <= r.ts < parsed.window_end)
    if outside:
        found.append(f"{outside} record(s) outside its window [{parsed.window_start}, {parsed.window_end})")
    order = [record_order(r) for r in parsed.records]
    if any(a >= b for a, b in itertools.pairwise(order)):
        found.append("its records are out of order (or repeated)")
    return found
