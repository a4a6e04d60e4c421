"""Backfill: an archive already in the ingest bucket, through the same steps as an upload.

`statemachines/backfill.asl.json` (Standard) runs, for one run id:

    plan     a bucket prefix (ListObjectVersions: the latest version of each key) or an S3
             Inventory manifest (its CSV or gzipped CSV files) -> a chunk file of batches in the
             ingest bucket, under `deidflow-backfill/<run>/`; at most `chunk_objects` objects per
             call, then again from the cursor it returns, until the source is listed
    prepare  one batch (a Distributed Map item) -> the deidentify state machine's input, as
             ExpandBatch makes it from the queue, minus the objects the status table says are
             already done: what makes a rerun resume where the last one stopped
    finish   counts every planned object's status; fails (BackfillIncomplete) while any has none

Why a Lambda lists, not the Map's own ItemReader (`s3:listObjectsV2`, or the inventory
`MANIFEST` reader): the reader hands each key to the child executions in clear, and the
execution history and a Map Run's failure causes show child inputs to whoever may read them.
Keys are PHI (folders named after patients). `plan` seals each key (cloud/objects.py KeySeal)
and computes its reference before anything reaches a state payload, so the Map only ever reads
our own chunk files, whose items are sealed payloads. It also gives the version ids (the
steps pin their reads to a version) that a plain listing lacks, and the batching (ItemBatcher's
job), which moto's interpreter does not parse.

Skipping what is done is the status table's word (one row per object_ref/version_id, written by
the steps themselves): a version published, a duplicate, quarantined, skipped or withdrawn is
done; one parked is the ingest queue's (its redrive brings it back through the Pipe); anything
else (no row, `deidentified` half way, `stalled` in the DLQ) runs again, which the steps'
idempotence makes safe.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ProcessingError
from .objects import ObjectRef, redrive_message
from .services import Services
from .steps import expand_batch

# Where the plan's chunk files go, in the ingest bucket (PHI side, DataKey): the bucket notifies
# only its drop and Orthanc prefixes, so nothing here is taken for an upload.
WORK_PREFIX = "deidflow-backfill/"
# Where S3 Inventory reports of the ingest bucket are delivered (the function may read them):
# reports, not instances, so a backfill of the whole bucket leaves them out too.
INVENTORY_PREFIX = "inventory/"
# Statuses after which an object version is not submitted again.
DONE = frozenset({"published", "duplicate", "quarantined", "skipped", "withdrawn", "source_deleted"})
# In the ingest queue (Park's redrive): the ingest path owns it; not submitted twice.
QUEUED = frozenset({"parked"})
DEFAULT_CHUNK_OBJECTS = 50_000
DEFAULT_BATCH_OBJECTS = 10
DEFAULT_MAX_CONCURRENCY = 10
# The most batches at once, whatever the environment says (the template's BackfillConcurrency
# MaxValue): 100 x 10 objects in flight already meets DeidentifyConcurrency's default of 50.
MAX_CONCURRENCY = 100
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")


class BackfillRequestError(ProcessingError):
    """The input names no source this stack may read, or is malformed: not retried."""


class BackfillIncomplete(ProcessingError):
    """Objects of the run have no status yet (a failed batch, a long-lane run still going): rerun
    or redrive the run; what is done is skipped. The message holds counts only."""


@dataclass(frozen=True)
class BackfillSettings:
    ingest_bucket: str
    chunk_objects: int = DEFAULT_CHUNK_OBJECTS
    batch_objects: int = DEFAULT_BATCH_OBJECTS
    # The Map's MaxConcurrency (child executions at once), the template's BackfillConcurrency.
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BackfillSettings:
        env = os.environ if env is None else env
        bucket = env.get("INGEST_BUCKET")
        if not bucket:
            raise RuntimeError("environment variable INGEST_BUCKET is not set")
        return cls(
            ingest_bucket=bucket,
            chunk_objects=int(env.get("BACKFILL_CHUNK_OBJECTS") or DEFAULT_CHUNK_OBJECTS),
            batch_objects=int(env.get("BACKFILL_BATCH_OBJECTS") or DEFAULT_BATCH_OBJECTS),
            max_concurrency=min(
                MAX_CONCURRENCY, max(1, int(env.get("BACKFILL_CONCURRENCY") or DEFAULT_MAX_CONCURRENCY))
            ),
        )


def backfill(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """The backfill function's steps (functions/backfill/app.py), by `event["step"]`."""
    settings = BackfillSettings.from_env()
    step = event.get("step")
    if step == "plan":
        return plan(event, services, settings)
    if step == "prepare":
        return prepare(event, services)
    if step == "finish":
        return finish(event, services, settings)
    raise BackfillRequestError(f"unknown backfill step {str(step)[:40]!r}")


# -- plan ----------------------------------------------------------------------------------------


def plan(event: Mapping[str, Any], services: Services, settings: BackfillSettings) -> dict[str, Any]:
    """One chunk of the source listed, sealed and batched into `deidflow-backfill/<run>/chunk-N.json`."""
    run = run_id(event)
    source = event.get("source") or {}
    bucket = str(source.get("bucket") or settings.ingest_bucket)
    if bucket != settings.ingest_bucket:
        # The steps read the ingest bucket only (their IAM, the key seal's associated data).
        raise BackfillRequestError("a backfill reads the stack's ingest bucket only")
    cursor = dict(event.get("cursor") or {})
    chunk = int(event.get("chunk") or 0)
    if "manifest" in source:
        listed, cursor_next = _from_inventory(services, settings, source["manifest"], cursor)
    else:
        prefix = str(source.get("prefix") or "")
        listed, cursor_next = _from_prefix(services, bucket, prefix, cursor, settings.chunk_objects)
    refs = [
        services.with_ref(ObjectRef(bucket, key, version_id=version, size=size))
        for key, version, size in listed
        if not key.startswith((WORK_PREFIX, INVENTORY_PREFIX))
    ]
    size = max(1, settings.batch_objects)
    batches = [
        {"step": "prepare", "run": run, "objects": [services.payload(r) for r in refs[i : i + size]]}
        for i in range(0, len(refs), size)
    ]
    chunk_key = f"{WORK_PREFIX}{run}/chunk-{chunk:05d}.json"
    services.s3.put_object(
        Bucket=bucket, Key=chunk_key, Body=json.dumps(batches).encode(), ContentType="application/json"
    )
    return {
        "run": run,
        "source": dict(source),
        "chunk": chunk + 1,
        "chunk_file": {"bucket": bucket, "key": chunk_key},
        "planned": len(refs),
        "cursor": cursor_next,
        "more": cursor_next is not None,
        "max_concurrency": settings.max_concurrency,
    }


def run_id(event: Mapping[str, Any]) -> str:
    run = str(event.get("run") or "")
    if not _RUN_ID.match(run):
        raise BackfillRequestError("the run id must be 1-80 letters, digits, '-' or '_'")
    return run


def _from_prefix(
    services: Services, bucket: str, prefix: str, cursor: Mapping[str, Any], limit: int
) -> tuple[list[tuple[str, str | None, int]], dict[str, Any] | None]:
    """(key, version, size) of each key's latest version under `prefix`, up to about `limit`
    (whole pages), and the cursor to go on from (None at the end). Delete markers are no content."""
    s3 = services.s3
    listed: list[tuple[str, str | None, int]] = []
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if cursor.get("key_marker"):
        args["KeyMarker"] = cursor["key_marker"]
        if cursor.get("version_marker"):
            args["VersionIdMarker"] = cursor["version_marker"]
    while True:
        page = s3.list_object_versions(**args)
        for version in page.get("Versions", []):
            if version.get("IsLatest"):
                vid = version.get("VersionId")
                listed.append((version["Key"], None if vid in (None, "null") else vid, int(version.get("Size") or 0)))
        if not page.get("IsTruncated"):
            return listed, None
        args["KeyMarker"] = page["NextKeyMarker"]
        if page.get("NextVersionIdMarker"):
            args["VersionIdMarker"] = page["NextVersionIdMarker"]
        else:
            args.pop("VersionIdMarker", None)
        if len(listed) >= limit:
            return listed, {"key_marker": args["KeyMarker"], "version_marker": args.get("VersionIdMarker")}


def _from_inventory(
    services: Services, settings: BackfillSettings, manifest: Mapping[str, Any], cursor: Mapping[str, Any]
) -> tuple[list[tuple[str, str | None, int]], dict[str, Any] | None]:
    """The rows of one inventory data file (`cursor["file"]`) of an S3 Inventory manifest
    (manifest.json: fileFormat CSV, fileSchema, files[].key), the ingest bucket's latest versions
    only; the cursor names the next file."""
    s3 = services.s3
    manifest_bucket = str(manifest.get("bucket") or settings.ingest_bucket)
    if manifest_bucket != settings.ingest_bucket:
        raise BackfillRequestError("the inventory must be delivered into the ingest bucket")
    body = s3.get_object(Bucket=manifest_bucket, Key=str(manifest["key"]))["Body"].read()
    document = json.loads(body)
    if str(document.get("fileFormat", "")).upper() != "CSV":
        raise BackfillRequestError("only CSV inventories are read (fileFormat CSV)")
    if document.get("sourceBucket") != settings.ingest_bucket:
        raise BackfillRequestError("the inventory lists another bucket than the ingest bucket")
    columns = [c.strip() for c in str(document.get("fileSchema", "")).split(",")]
    if "Key" not in columns:
        raise BackfillRequestError("the inventory's fileSchema has no Key")
    files = [str(f["key"]) for f in document.get("files", [])]
    index = int(cursor.get("file") or 0)
    if index >= len(files):
        return [], None
    data = s3.get_object(Bucket=manifest_bucket, Key=files[index])["Body"].read()
    if files[index].endswith(".gz"):
        data = gzip.decompress(data)
    listed = list(_inventory_rows(io.StringIO(data.decode("utf-8")), columns))
    return listed, ({"file": index + 1} if index + 1 < len(files) else None)


def _inventory_rows(text: io.StringIO, columns: list[str]) -> Iterator[tuple[str, str | None, int]]:
    """Inventory CSV rows (no header; keys URL-encoded, as S3 Inventory writes them)."""
    from urllib.parse import unquote

    for row in csv.reader(text):
        record = dict(zip(columns, row, strict=False))
        if record.get("IsLatest", "true").lower() != "true" or record.get("IsDeleteMarker", "false").lower() == "true":
            continue
        version = record.get("VersionId") or None
        yield unquote(record["Key"]), version, int(record.get("Size") or 0)


# -- prepare -------------------------------------------------------------------------------------


def prepare(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """A planned batch -> the deidentify state machine's input, without what is already done.

    The objects go through ExpandBatch's own code (lanes, deadlines, the long lane, skip
    suffixes) as the queue's notifications would: one path for an upload and a backfill."""
    refs = [ObjectRef.from_payload(item, services.key_seal) for item in event.get("objects") or []]
    statuses = status_of(services.client("dynamodb"), services.settings.status_table, refs)
    todo = [r for r in refs if statuses.get((r.status_key, r.version_id or "null")) not in DONE | QUEUED]
    messages = [{"body": redrive_message(r, 0)} for r in todo]
    expanded = expand_batch(messages, services) if messages else {"objects": [], "skipped": [], "long_lane": []}
    return {
        **expanded,
        "backfill": {"run": event.get("run"), "objects": len(refs), "done_before": len(refs) - len(todo)},
    }


def status_of(dynamodb: Any, table_name: str, refs: Iterable[ObjectRef]) -> dict[tuple[str, str], str]:
    """(object_ref, version_id) -> status, for the versions that have a status row (BatchGetItem
    on a DynamoDB client, consistent reads, 100 keys a call)."""
    keys = list(dict.fromkeys((r.status_key, r.version_id or "null") for r in refs))
    found: dict[tuple[str, str], str] = {}
    for i in range(0, len(keys), 100):
        pending: dict[str, Any] = {
            table_name: {
                "Keys": [
                    {"object_ref": {"S": ref}, "version_id": {"S": version}} for ref, version in keys[i : i + 100]
                ],
                "ConsistentRead": True,
                "ProjectionExpression": "object_ref, version_id, #s",
                "ExpressionAttributeNames": {"#s": "status"},
            }
        }
        while pending:
            answer = dynamodb.batch_get_item(RequestItems=pending)
            for item in answer.get("Responses", {}).get(table_name, []):
                found[(item["object_ref"]["S"], item["version_id"]["S"])] = item.get("status", {}).get("S", "")
            pending = answer.get("UnprocessedKeys") or {}
    return found


# -- finish and progress -------------------------------------------------------------------------


def planned_objects(s3: Any, bucket: str, run: str) -> list[ObjectRef]:
    """Every object the run's chunk files name (refs and versions; no key is opened)."""
    refs: list[ObjectRef] = []
    args: dict[str, Any] = {"Bucket": bucket, "Prefix": f"{WORK_PREFIX}{run}/chunk-"}
    while True:
        page = s3.list_objects_v2(**args)
        for item in page.get("Contents", []):
            batches = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
            for batch in batches:
                for source in batch["objects"]:
                    refs.append(ObjectRef(bucket, "", version_id=source.get("version_id"), ref=source["ref"]))
        if not page.get("IsTruncated"):
            return refs
        args["ContinuationToken"] = page["NextContinuationToken"]


def progress(s3: Any, dynamodb: Any, status_table: str, bucket: str, run: str) -> dict[str, int]:
    """The run's objects by outcome: published (duplicates included), quarantined, skipped,
    parked (in the ingest queue), stalled (in the DLQ), remaining (no final status yet). From an
    S3 and a DynamoDB client: the function's own, or an operator's (`deidflow backfill-status`)."""
    refs = planned_objects(s3, bucket, run)
    statuses = status_of(dynamodb, status_table, refs)
    counts: Counter[str] = Counter()
    for ref in {(r.status_key, r.version_id or "null") for r in refs}:
        status = statuses.get(ref, "")
        if status in ("published", "duplicate"):
            counts["published"] += 1
        elif status in DONE:
            counts["skipped" if status != "quarantined" else "quarantined"] += 1
        elif status in QUEUED:
            counts["parked"] += 1
        elif status == "stalled":
            counts["stalled"] += 1
        else:
            counts["remaining"] += 1
    total = sum(counts.values())
    return {
        "objects": total,
        **{k: counts[k] for k in ("published", "quarantined", "skipped", "parked", "stalled", "remaining")},
    }


def finish(event: Mapping[str, Any], services: Services, settings: BackfillSettings) -> dict[str, Any]:
    """The run's tally; fails while an object has no status (no gaps: every object is accounted for)."""
    run = run_id(event)
    counts = progress(
        services.s3, services.client("dynamodb"), services.settings.status_table, settings.ingest_bucket, run
    )
    if counts["remaining"] or counts["stalled"]:
        raise BackfillIncomplete(
            f"{counts['remaining']} of {counts['objects']} objects have no final status and "
            f"{counts['stalled']} stalled: run the backfill again (done objects are skipped)"
        )
    return {"run": run, "status": "complete", **counts}
