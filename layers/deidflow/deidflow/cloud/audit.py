"""The audit trail's AWS edge: records in DynamoDB, sealed segments in an Object Lock bucket, the
chain head in an SSM parameter (the pure part is `deidflow.research.audit`).

The research API calls `AuditLog.write` before it answers and fails the request when it raises; a
scheduled Lambda (`sealer_handler`) seals what was written since the last run. Logs carry keys,
counts and windows, never a record's contents.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError

from ..research.audit import (
    EMPTY_HEAD,
    SEGMENT_PREFIX,
    AuditRecord,
    ChainHead,
    Problem,
    Segment,
    SegmentError,
    VerifyReport,
    format_ts,
    parse_head,
    parse_segment,
    parse_ts,
    record_order,
    seal_segment,
    segment_key,
    sha256_hex,
    verify_chain,
)
from .services import environment_reader

BY_DAY_INDEX = "by_day"
DEFAULT_MARGIN = timedelta(minutes=2)
# One segment never spans more than a day of records: a sealer that was down for a while catches up
# a day per segment instead of holding weeks of records in one Lambda's memory.
DEFAULT_MAX_WINDOW = timedelta(days=1)

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "deidflow"))


class AuditChainError(RuntimeError):
    """The bucket holds a segment the sealer did not expect: it stops rather than chain past it."""


class AuditLog:
    """The research API's writer: one item per request, never overwritten."""

    def __init__(self, table: Any) -> None:
        self.table = table  # a boto3 DynamoDB Table resource

    def write(self, record: AuditRecord) -> None:
        """Any failure propagates: the API answers 503 rather than serve a request it did not record.
        The condition makes a reused request id fail instead of replacing an earlier record."""
        self.table.put_item(Item=record.to_item(), ConditionExpression="attribute_not_exists(pk)")


# -- reading the table ----------------------------------------------------------------------------------


def _pages(call: Callable[..., dict[str, Any]], **kwargs: Any) -> Iterator[dict[str, Any]]:
    while True:
        page = call(**kwargs)
        yield from page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _day_items(table: Any, day: str, start: str | None = None, end: str | None = None) -> Iterator[dict[str, Any]]:
    """One day of the by_day index, optionally only sort keys between `start` and `end`. The sort key
    is "<ts>#<request_id>", so BETWEEN on bare timestamps is start <= ts < end exactly."""
    condition = "#d = :d"
    values: dict[str, Any] = {":d": day}
    names = {"#d": "day"}
    if start is not None and end is not None:
        condition += " AND #s BETWEEN :a AND :b"
        values.update({":a": start, ":b": end})
        names["#s"] = "sk"
    yield from _pages(
        table.query,
        IndexName=BY_DAY_INDEX,
        KeyConditionExpression=condition,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def _days(first: str, last: str) -> list[str]:
    """Every yyyy-mm-dd from `first` to `last`, both included."""
    day, end = datetime.strptime(first, "%Y-%m-%d"), datetime.strptime(last, "%Y-%m-%d")
    out = []
    while day <= end:
        out.append(day.strftime("%Y-%m-%d"))
        day += timedelta(days=1)
    return out


def days_between(since: str, until: str) -> list[str]:
    """The days `audit query --since --until` covers (both included)."""
    if until < since:
        raise ValueError("--until is before --since")
    return _days(since, until)


def records_between(table: Any, start: str, end: str) -> list[AuditRecord]:
    """Every record with start <= ts < end, in seal order (the by_day index, day by day)."""
    records = []
    for day in _days(start[:10], end[:10]):
        for item in _day_items(table, day, start, end):
            record = AuditRecord.from_item(item)
            if start <= record.ts < end:
                records.append(record)
    return sorted(records, key=record_order)


def earliest_record_ts(table: Any) -> str | None:
    """The oldest record's ts, for the first window. A scan of the sort keys: it runs once in the
    chain's life (while the head is `{}`)."""
    earliest: str | None = None
    for item in _pages(table.scan, ProjectionExpression="#s", ExpressionAttributeNames={"#s": "sk"}):
        ts = str(item["sk"]).split("#", 1)[0]
        if earliest is None or ts < earliest:
            earliest = ts
    return earliest


def query_records(table: Any, *, days: list[str], sub: str | None, study: str | None) -> list[AuditRecord]:
    """Who looked at this study (`study`), what did this user see (`sub`), on these days."""
    found = []
    for day in days:
        for item in _day_items(table, day):
            record = AuditRecord.from_item(item)
            if sub is not None and record.sub != sub:
                continue
            if study is not None and study not in record.studies:
                continue
            found.append(record)
    return sorted(found, key=record_order)


# -- the head and the segments --------------------------------------------------------------------------


def read_head(ssm: Any, parameter_name: str) -> ChainHead | None:
    value = ssm.get_parameter(Name=parameter_name)["Parameter"]["Value"]
    return parse_head(value)


def write_head(ssm: Any, parameter_name: str, head: ChainHead) -> None:
    ssm.put_parameter(Name=parameter_name, Value=head.to_json(), Type="String", Overwrite=True)


def _get_bytes(s3: Any, bucket: str, key: str, version_id: str | None = None) -> bytes | None:
    """The object's bytes, or None when there is none (or its latest version is a delete marker)."""
    extra = {"VersionId": version_id} if version_id else {}
    try:
        body: bytes = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return body


def _put_segment(s3: Any, bucket: str, segment: Segment) -> None:
    """Written once: If-None-Match refuses a second version on top of a sealed segment (a sealer
    that raced another, or a planted object), and the SHA-256 checksum is both what Object Lock
    buckets demand of a put and S3's check that the bytes hashed here are the bytes it stored."""
    checksum = base64.b64encode(hashlib.sha256(segment.data).digest()).decode("ascii")
    try:
        s3.put_object(
            Bucket=bucket,
            Key=segment.key,
            Body=segment.data,
            ContentType="application/x-ndjson",
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
            IfNoneMatch="*",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "PreconditionFailed":
            raise
        if _get_bytes(s3, bucket, segment.key) != segment.data:
            raise AuditChainError(f"{segment.key} already exists with other bytes; not sealing over it") from None


def _sealed_orphan(
    table: Any,
    s3: Any,
    bucket: str,
    head: ChainHead | None,
    window_start: str,
    *,
    latest_end: str,
    max_window: timedelta,
) -> Segment | None:
    """The segment a crashed run wrote after the head but before it could update the head, if any.

    Its key is dated by its window's end, which lies within `max_window` of the head's, so at most
    two keys are looked at. It is adopted only if sealing its window again gives the same bytes:
    anything else in that place was not written by this sealer from these records."""
    seq = 1 if head is None else head.seq + 1
    last_day = format_ts(min(parse_ts(window_start) + max_window, parse_ts(latest_end)))[:10]
    for day in _days(window_start[:10], max(last_day, window_start[:10])):
        key = segment_key(seq, f"{day}T00:00:00.000Z")
        data = _get_bytes(s3, bucket, key)
        if data is None:
            continue
        try:
            parsed = parse_segment(data)
        except SegmentError as exc:
            raise AuditChainError(f"{key} follows the chain head but is unreadable ({exc})") from None
        if parsed.window_start != window_start or not window_start < parsed.window_end <= latest_end:
            raise AuditChainError(f"{key} follows the chain head but its window does not")
        again = seal_segment(
            records_between(table, window_start, parsed.window_end), head, window_start, parsed.window_end
        )
        if again.data != data:
            raise AuditChainError(
                f"{key} follows the chain head but sealing its window again gives other bytes "
                f"({parsed.count} record(s) sealed, {again.count} in the table): records arrived late, "
                "or the segment or the table was edited; check, then set the head by hand"
            )
        logger.warning("audit_segment_adopted", extra={"segment": key, "count": again.count})
        return again
    return None


def seal_pending(
    table: Any,
    s3: Any,
    bucket: str,
    ssm: Any,
    parameter_name: str,
    *,
    now: datetime,
    margin: timedelta = DEFAULT_MARGIN,
    max_window: timedelta = DEFAULT_MAX_WINDOW,
) -> Segment | None:
    """Seal the records written since the head's window ended, up to `now - margin`, into the next
    segment; None when there is nothing to seal yet (no record ever, or the last run was less than
    the margin ago).

    Records younger than the margin wait for the next run: a request that started before the window's
    end but wrote its record after the sealer read the table would otherwise never be sealed.

    A window without records still gets its (empty) segment: windows then run without a gap from
    segment 1 to the head, so a missing segment shows as a gap whatever it held, and "nobody asked
    anything between 03:00 and 03:05" is itself sealed, not just implied by a mutable parameter.

    A crash between the segment's write and the head's update leaves a segment after the head; the
    next run finds it, checks it is what it would seal, and moves the head onto it."""
    head = read_head(ssm, parameter_name)
    latest_end = format_ts(now - margin)
    if head is None:
        earliest = earliest_record_ts(table)
        if earliest is None:
            return None
        window_start = earliest[:10] + "T00:00:00.000Z"
    else:
        window_start = head.window_end
    orphan = _sealed_orphan(table, s3, bucket, head, window_start, latest_end=latest_end, max_window=max_window)
    if orphan is not None:
        write_head(ssm, parameter_name, orphan.head)
        return orphan
    if latest_end <= window_start:
        return None
    window_end = min(latest_end, format_ts(parse_ts(window_start) + max_window))
    segment = seal_segment(records_between(table, window_start, window_end), head, window_start, window_end)
    _put_segment(s3, bucket, segment)
    write_head(ssm, parameter_name, segment.head)
    return segment


def _segment_keys(s3: Any, bucket: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=SEGMENT_PREFIX):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def read_segments(s3: Any, bucket: str, *, workers: int = 16) -> dict[str, bytes]:
    """Every segment's latest version (one GET each, in parallel: boto3 clients are thread-safe)."""
    keys = _segment_keys(s3, bucket)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        bodies = list(pool.map(lambda key: _get_bytes(s3, bucket, key), keys))
    return {key: body for key, body in zip(keys, bodies, strict=True) if body is not None}


def version_problems(s3: Any, bucket: str) -> list[Problem]:
    """What the latest versions cannot show. In compliance mode no version can be deleted, so
    tampering can only add: a new version on top of a sealed segment (flagged when its bytes differ
    from the one below: a same-bytes retry is harmless), or a delete marker (the key then looks
    deleted; its sealed versions are still there)."""
    versions: dict[str, list[str]] = {}
    deleted: set[str] = set()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=SEGMENT_PREFIX):
        for version in page.get("Versions", []):
            versions.setdefault(version["Key"], []).append(version["VersionId"])
        for marker in page.get("DeleteMarkers", []):
            if marker.get("IsLatest"):
                deleted.add(marker["Key"])
    problems = [Problem(key, "deleted: a delete marker hides its sealed version(s)") for key in sorted(deleted)]
    for key, ids in sorted(versions.items()):
        if len(ids) > 1 and len({sha256_hex(_get_bytes(s3, bucket, key, v) or b"") for v in ids}) > 1:
            problems.append(Problem(key, f"{len(ids)} versions with different bytes: overwritten after sealing"))
    return problems


def verify_bucket(s3: Any, bucket: str, ssm: Any, parameter_name: str) -> VerifyReport:
    """`verify_chain` over the bucket's latest versions and the head, plus `version_problems`."""
    head = read_head(ssm, parameter_name)
    report = verify_chain(read_segments(s3, bucket), head)
    report.problems.extend(version_problems(s3, bucket))
    return report


# -- the scheduled sealer -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealerSettings:
    table: str
    bucket: str
    head_parameter: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SealerSettings:
        need = environment_reader(env)
        return cls(need("AUDIT_TABLE"), need("AUDIT_BUCKET"), need("AUDIT_HEAD_PARAMETER"))


# A run seals at most this many windows: enough to catch up a month after an outage, bounded so one
# invocation stays well inside its timeout.
MAX_SEGMENTS_PER_RUN = 31


@logger.inject_lambda_context(log_event=False)
def sealer_handler(event: Any, context: Any) -> dict[str, Any]:
    """Seal everything up to now minus the margin: one segment, or one a day when catching up after
    an outage. One `now` for the whole run, so the last window ends where the margin starts instead
    of a few milliseconds later each time round. Clients are made per run: the schedule runs it
    every few minutes, and making them is cheap next to a run."""
    import boto3

    settings = SealerSettings.from_env()
    table = boto3.resource("dynamodb").Table(settings.table)
    s3, ssm = boto3.client("s3"), boto3.client("ssm")
    now = datetime.now(UTC)
    sealed: list[Segment] = []
    while len(sealed) < MAX_SEGMENTS_PER_RUN:
        segment = seal_pending(table, s3, settings.bucket, ssm, settings.head_parameter, now=now)
        if segment is None:
            break
        sealed.append(segment)
        logger.info(
            "audit_segment_sealed",
            extra={"segment": segment.key, "count": segment.count, "window_end": segment.head.window_end},
        )
    return {
        "segment": sealed[-1].key if sealed else None,
        "segments": len(sealed),
        "count": sum(s.count for s in sealed),
        "head": EMPTY_HEAD if not sealed else sealed[-1].head.to_json(),
    }
