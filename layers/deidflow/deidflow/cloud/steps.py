"""What each state of the workflow does, on pointers in and small dicts out.

The states pass `{"source": {bucket, key, version_id, size, ref}, ...}` and add a few fields each; DICOM
bytes only ever travel between S3 and a function, never through the state machine (256 KB limit).

    expand_batch           SQS messages -> objects to process + skipped (recorded with a reason)
    deidentify_header      original -> staging object, unless its pixels need a scan
    redact_burned_in_text  original -> pixels cleaned, then header -> staging object
    publish                staging object -> research bucket, in version order
    index_header           staging object -> index item (+ sidecar when large), after Publish
    quarantine             content that cannot be made safe -> status record, tags on the original, reason
    park                   a transient failure that outlasted the retries -> back in the queue, later
    withdraw_source        an original deleted -> its published instance out of research (or marked)

Every step is idempotent: outputs are keyed by the new UIDs and their bytes are deterministic, so
a redelivered event or a retried state overwrites with the same content. Staging copies alone are
per run (`staging/<run>/…`), so that two runs of one object at once never share one.

One SOP Instance UID, one source: the first object to reach staging with a (pseudonymous) SOP
Instance UID claims it, in a `sop:<UID>` item of the status table. Another object with the same
UID and the same output bytes is a duplicate (published again, identically, and recorded as
such); with other bytes it is quarantined as `sop_instance_uid_conflict`, and the claim item
names the object kept. `deidflow deid` applies the same rule in input order. The claim goes with
its instance: a deleted original's instance is withdrawn (`withdraw_source`) and its claim
released, so that a later upload of the same instance publishes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from ..engine import PixelScanRequired
from ..index import SIDECAR_CONTENT_TYPE, IndexEntry, default_sidecar_key, index_file
from ..research.qido import study_summary
from ..rules import ALL_LABEL
from ..storage import research_place
from . import streaming
from .budget import EXPRESS, LONG, express_deadline
from .errors import MISSING_CODES, RejectedObject, TransientError, is_throttling, rejection_from_error
from .objects import DEIDENTIFY, ObjectRef, parse_batch, redrive_message
from .services import Services
from .streaming import STREAM_OBJECTS_ABOVE, Output

# Identifiers the honest broker needs to go from a pseudonym back to the source.
QUARANTINE_TAG_KEYS = ("deidflow-status", "deidflow-reason")


def expand_batch(messages: Any, services: Services) -> dict[str, Any]:
    """The Pipe's batch of SQS messages -> {"objects": [...], "skipped": [...], "long_lane": [...]}.

    Each object gets its lane here (budget.py): in an EXPRESS workflow the express lane, with its
    deadline, unless it is too large for it or comes back from the long lane, in which case its
    long-lane execution is started here and only its reference is listed."""
    if isinstance(messages, Mapping):  # a single message, or {"Records": [...]} from a test
        messages = messages.get("Records") if "Records" in messages and "body" not in messages else [messages]
    settings = services.settings
    batch = parse_batch(messages or [], settings.skip_suffixes)
    # Each object gets its keyed reference here, once: later steps log and record it from the payload.
    skipped = [replace(s, ref=services.with_ref(s.ref)) if s.ref is not None else s for s in batch.skipped]
    for skip in skipped:
        if skip.ref is not None:
            record_status(services, skip.ref, "skipped", reason=skip.reason)
    objects: list[ObjectRef] = []
    long_lane: list[ObjectRef] = []
    deadline = express_deadline(time.time())
    for ref in map(services.with_ref, batch.objects):
        if settings.workflow_type != "EXPRESS":
            objects.append(replace(ref, lane=LONG))
        elif ref.lane == LONG or (ref.size or 0) > (settings.long_lane_object_bytes or 0) > 0:
            long_lane.append(replace(ref, lane=LONG))
        else:
            objects.append(replace(ref, lane=EXPRESS, deadline=deadline))
    for ref in long_lane:
        start_long_lane(services, ref)
    return {
        "objects": [{"source": services.payload(ref)} for ref in objects],
        "skipped": [s.as_dict() for s in skipped],
        "long_lane": [{"ref": ref.ref, "version_id": ref.version_id} for ref in long_lane],
    }


def start_long_lane(services: Services, ref: ObjectRef) -> str:
    """A Standard execution of the workflow for this one object (budget.py's long lane). Named
    after the object version and its round, so a retried or replayed start is the same execution."""
    arn = services.settings.long_lane_arn
    if not arn:
        raise RuntimeError("environment variable LONG_LANE_STATE_MACHINE_ARN is not set")
    version = hashlib.sha256(str(ref.version_id).encode()).hexdigest()[:12]
    name = f"{ref.ref}-{ref.action[:1]}{version}-r{ref.round}"
    source = services.payload(replace(ref, lane=LONG, deadline=None))
    start = {"objects": [{"source": source}], "skipped": [], "long_lane": []}
    try:
        services.client("stepfunctions").start_execution(stateMachineArn=arn, name=name, input=json.dumps(start))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
    return name


def deidentify_header(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """Header de-identification, published by this step itself (`_publish_direct`: one PutObject
    to the research key, no staging copy and no Publish state); instances whose pixels need a
    scan go on to the redaction step."""
    ref = services.source_of(event)
    try:
        with _original(services, ref, scan_pixels=False) as output:
            return _stage(services, ref, output, needs_pixel_scan=False, direct=True)
    except PixelScanRequired:
        return {"source": services.payload(ref), "needs_pixel_scan": True}


def redact_burned_in_text(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """Pixels first (the policy reads the original header), then the header, in one engine pass."""
    ref = services.source_of(event)
    with _original(services, ref, scan_pixels=True) as output:
        result = _stage(services, ref, output, needs_pixel_scan=True)
    pixels = output.processed.pixels
    result["pixels"] = {
        "redacted": bool(pixels and pixels.redacted),
        "boxes": len(pixels.boxes) if pixels else 0,
    }
    return result


def index_header(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """The de-identified header into the index table (a header too big for an item goes to a
    sidecar), with what the research API needs: the rules' labels, where each frame sits in the
    object, and the study and series in the catalog. After Publish: the index never names an
    object that is not in the bucket.

    The item carries its publish generation, and the put is conditional on it: a slow run of an
    older version never replaces the index item of a newer one. Then the staging copy goes, and
    what a moved instance (a corrected Study or Series UID) left at its old place: its sidecar,
    and its series and study in the catalog when no other instance is indexed there."""
    staged = event["staged"]
    research_key = staged["research_key"]
    settings = services.settings
    published = event.get("published") or {}
    generation = int(published.get("generation", 0))
    # What this run published: the staging copy Publish copied (the pixel path), or the version of
    # the research object the header step wrote (whatever was written at the key since).
    staging_key = staged.get("staging_key")
    written = (
        ObjectRef(settings.research_bucket, staging_key)
        if staging_key
        else ObjectRef(settings.research_bucket, research_key, version_id=published.get("version_id"))
    )
    with _header_copy(services, written) as path:
        entry = index_file(
            path,
            research_key,
            labels=staged.get("labels") or (),
            max_item_bytes=settings.max_index_item_bytes,
        )
    if entry.sidecar is not None:
        services.s3.put_object(
            Bucket=settings.research_bucket,
            Key=entry.sidecar_key,
            Body=entry.sidecar,
            ContentType=SIDECAR_CONTENT_TYPE,
        )
    current = _put_index_item(services, {**entry.item, PUBLISH_GENERATION: generation})
    if current:
        _put_catalog_items(services, catalog_items(entry))
    replaced = published.get("replaced")
    if replaced:
        _forget_research_instance(services, replaced, keep_sidecar=entry.sidecar_key)
    if staging_key:
        services.s3.delete_object(Bucket=settings.research_bucket, Key=staging_key)
    return {
        "source": event["source"],
        "status": event.get("status", "published"),
        "research_key": research_key,
        "indexed": {"sidecar": entry.sidecar is not None, "current": current},
    }


# The index item's publish generation (the SOP claim's counter, see `publish`).
PUBLISH_GENERATION = "publish_generation"


def _put_index_item(services: Services, item: Mapping[str, Any]) -> bool:
    """Put unless the index holds a newer publish of the same instance; True when written."""
    try:
        services.table(services.settings.index_table).put_item(
            Item=dict(item),
            ConditionExpression="attribute_not_exists(#gen) OR #gen <= :gen",
            ExpressionAttributeNames={"#gen": PUBLISH_GENERATION},
            ExpressionAttributeValues={":gen": item[PUBLISH_GENERATION]},
        )
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return False


def _forget_research_instance(services: Services, research_key: str, *, keep_sidecar: str | None = None) -> None:
    """What the index side held for an instance no longer at `research_key` (Publish removed the
    object): its sidecar, and the catalog's series and study items once nothing indexed is left there."""
    settings = services.settings
    old_sidecar = default_sidecar_key(research_key)
    if old_sidecar != keep_sidecar:
        services.s3.delete_object(Bucket=settings.research_bucket, Key=old_sidecar)
    place = research_place(research_key)
    if place is None:
        return
    study, series = place
    index = services.table(settings.index_table)
    catalog = services.table(settings.catalog_table)
    in_study = index.query(
        IndexName="by_study",
        KeyConditionExpression="study_instance_uid = :study",
        ExpressionAttributeValues={":study": study},
        ProjectionExpression="series_instance_uid",
    ).get("Items", [])
    if not any(i.get("series_instance_uid") == series for i in in_study):
        catalog.delete_item(Key={"study_instance_uid": study, "item": f"series#{series}"})
    if not in_study:
        catalog.delete_item(Key={"study_instance_uid": study, "item": "study"})


def _put_catalog_items(services: Services, items: list[dict[str, Any]]) -> None:
    """The catalog's rows of an indexed instance, put only where they are missing or differ: every
    instance of a series writes the same two rows, and a strongly consistent read of both (one
    BatchGetItem, 1 read unit each) is a fifth of the price of putting them again (1 write unit
    each). Strongly consistent, so a row a withdrawal deleted a moment ago is seen missing."""
    if not items:
        return
    table_name = services.settings.catalog_table
    keys = [{"study_instance_uid": i["study_instance_uid"], "item": i["item"]} for i in items]
    found = _catalog_rows(services, table_name, keys)
    table = services.table(table_name)
    for item in items:
        if found.get((item["study_instance_uid"], item["item"])) != item:
            table.put_item(Item=item)


def _catalog_rows(services: Services, table_name: str, keys: list[dict[str, str]]) -> dict[tuple[str, str], Any]:
    """The catalog rows at `keys` as they are (a consistent BatchGetItem; what it leaves
    unprocessed, under throttling, counts as missing: it is put again, as before)."""
    # The Table resource's own client converts attribute values both ways, as the Table does.
    client = services.table(table_name).meta.client
    answer = client.batch_get_item(RequestItems={table_name: {"Keys": keys, "ConsistentRead": True}})
    rows = answer.get("Responses", {}).get(table_name, [])
    return {(row["study_instance_uid"], row["item"]): row for row in rows}


def catalog_items(entry: IndexEntry) -> list[dict[str, Any]]:
    """The catalog's study and series items for an indexed instance: what a study search lists
    before deciding on the instances. Put, not updated: any instance of the study writes the same."""
    item = entry.item
    study, series = item.get("study_instance_uid"), item.get("series_instance_uid")
    if not study or not series:
        return []
    header = json.loads(entry.sidecar.decode("utf-8") if entry.sidecar is not None else item["dicom_json"])
    summary = json.dumps(study_summary(header), sort_keys=True, separators=(",", ":"))
    dated = {"study_date": item["study_date"]} if "study_date" in item else {}
    return [
        {"study_instance_uid": study, "item": "study", "summary": summary, **dated},
        {"study_instance_uid": study, "item": f"series#{series}", "series_instance_uid": series},
    ]


def publish(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """Staging -> research bucket (server-side copy); IndexHeader comes after, so whatever the
    index shows is in the bucket.

    Ordering: the copy takes the next publish generation from the SOP's claim, which IndexHeader
    writes with the index item (conditionally: an older generation never replaces a newer one).
    The version listing is read before the copy (a replay of an older version publishes nothing)
    and after it: if a newer version came meanwhile, this copy may have landed on top of the newer
    one's, so the newer version is sent through the queue again and its run writes last; if the
    original was deleted meanwhile, this copy is taken back. A Study or Series UID corrected on a
    re-send moves the instance: the research object at the old key goes."""
    ref = services.source_of(event)
    staged = event["staged"]
    bucket = services.settings.research_bucket
    _still_current(services, ref)
    generation, replaced = _next_generation(services, ref, staged)
    copied = streaming.copy_object(
        services.s3,
        source=ObjectRef(bucket, staged["staging_key"]),
        size=int(staged.get("size") or 0),
        bucket=bucket,
        key=staged["research_key"],
        content_type="application/dicom",
    )
    # Publish may not read the original (no s3:GetObject on the ingest bucket): the listing says.
    latest = _latest_entry(services, ref)
    current = None if latest is None or latest[1] == "DeleteMarkers" else latest[0].get("VersionId")
    published = _after_write(services, ref, staged, generation, replaced, copied.get("VersionId"), current=current)
    return {**_passthrough(event), **published}


def _publish_direct(
    services: Services,
    ref: ObjectRef,
    output: Output,
    staged: dict[str, Any],
    counted: tuple[int, str | None] | None = None,
) -> dict[str, Any]:
    """The header step's publish: its output written once, straight to the research key, with
    Publish's guarantees and without its staging PUT and server-side COPY (two PUT-class requests
    where one does) or its Lambda call.

    Version order as in `publish`: the read just made was of the key's current version (a replay
    of an older version stopped there, before any claim), the write takes the claim's next publish
    generation, and the key's current version is asked again after the write (a HEAD: this step
    may read the original), so that a newer version that came meanwhile is sent through the queue
    again and writes last, and a delete meanwhile takes this write back. Nothing partial is ever
    visible (a PutObject is whole or absent) and IndexHeader still comes after. Publish's own
    check before its copy has no counterpart: nothing runs between this step's read and its write
    that the check after the write does not cover. `counted`: the generation `_claim_and_count`
    took with the claim, when it could."""
    generation, replaced = counted if counted is not None else _next_generation(services, ref, staged)
    written = output.put(services.s3, bucket=services.settings.research_bucket, key=staged["research_key"])
    return _after_write(
        services,
        ref,
        staged,
        generation,
        replaced,
        written.get("VersionId"),
        current=_current_version(services, ref),
        warnings=",".join(output.processed.warnings) or None,
    )


def _after_write(
    services: Services,
    ref: ObjectRef,
    staged: Mapping[str, Any],
    generation: int,
    replaced: str | None,
    version_id: str | None,
    *,
    current: str | None,
    warnings: str | None = None,
) -> dict[str, Any]:
    """After the research object was written (`version_id`): `current` is the key's current
    version, asked after the write (None: deleted). If that is no longer this run's version, a
    delete takes the write back and a newer version is sent through the queue again (its run
    writes last); either way this run ends skipped, unindexed. Otherwise an instance moved by a
    corrected UID leaves its old key, and the version is recorded published (or duplicate)."""
    bucket = services.settings.research_bucket
    research_key = staged["research_key"]
    status = "duplicate" if staged.get("duplicate_of") else "published"
    try:
        _judge_current(ref, current)
    except RejectedObject as exc:
        if exc.reason == "missing":  # deleted while it was written: nothing of it stays published
            _delete_version(services, bucket, research_key, version_id)
        else:
            _send_again(services, replace(ref, version_id=current, size=None, round=0))
        raise
    if replaced and replaced != research_key:
        services.s3.delete_object(Bucket=bucket, Key=replaced)
    record_status(
        services,
        ref,
        status,
        research_key=research_key,
        same_as=staged.get("duplicate_of"),
        published_key=research_key if status == "published" else None,
        warnings=warnings,
    )
    published: dict[str, Any] = {"generation": generation}
    if version_id:
        published["version_id"] = version_id
    if replaced and replaced != research_key:
        published["replaced"] = replaced
    return {"status": status, "research_key": research_key, "published": published}


def _next_generation(services: Services, ref: ObjectRef, staged: Mapping[str, Any]) -> tuple[int, str | None]:
    """The claim's publish counter, counted up by the holder (a duplicate's identical bytes take the
    current one, never a new one), and the research key the holder published under before (a
    corrected Study or Series UID moves it)."""
    table = services.table(services.settings.status_table)
    key = _claim_key(staged["sop_instance_uid"])
    if staged.get("duplicate_of"):
        held = table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
        if WITHDRAWING in held or not held.get("holder"):
            # Its holder is being withdrawn, or was (its original deleted): this copy's run comes
            # back (Park) and claims the UID for itself, rather than publish what was taken out.
            raise TransientError("the research SOP Instance UID's holder was withdrawn")
        return int(held.get("generation", 0)), None
    names = {
        "#rk": "research_key",
        "#gen": "generation",
        "#holder": "holder",
        "#version": "published_version",
        "#withdrawing": WITHDRAWING,
    }
    version = ref.version_id or "null"
    try:
        old = table.update_item(
            Key=key,
            UpdateExpression="SET #rk = :rk, #version = :version ADD #gen :one",
            # The same version published again (a retry, a redelivered event) keeps its generation;
            # nothing is published while WithdrawSource takes the instance out.
            ConditionExpression=(
                "#holder = :me AND (attribute_not_exists(#version) OR #version <> :version)"
                " AND attribute_not_exists(#withdrawing)"
            ),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={
                ":rk": staged["research_key"],
                ":one": 1,
                ":me": ref.status_key,
                ":version": version,
            },
            ReturnValues="ALL_OLD",
        ).get("Attributes", {})
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        held = table.get_item(Key=key, ConsistentRead=True).get("Item") or {}
        if held.get("holder") != ref.status_key:
            # Let go by a failure of another run of this object before anything was published, or
            # by a withdrawal (the original deleted meanwhile).
            raise TransientError("the claim on the research SOP Instance UID changed hands") from None
        if WITHDRAWING in held:
            raise TransientError("the research SOP Instance UID is being withdrawn") from None
        return int(held.get("generation", 0)), None
    return int(old.get("generation", 0)) + 1, (str(old["research_key"]) if old.get("research_key") else None)


def _delete_version(services: Services, bucket: str, key: str, version_id: str | None) -> None:
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if version_id:
        args["VersionId"] = version_id
    services.s3.delete_object(**args)


def _send_again(services: Services, ref: ObjectRef | None) -> None:
    """The current version through the ingest queue again, as its own notification."""
    if ref is None:
        return
    if not services.settings.ingest_queue_url:
        raise RuntimeError("environment variable INGEST_QUEUE_URL is not set")
    message = redrive_message(ref, 0)
    services.client("sqs").send_message(QueueUrl=services.settings.ingest_queue_url, MessageBody=message)


def quarantine(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """Record why the object failed and mark the original; the original itself stays where it is."""
    ref = services.source_of(event)
    reason, detail, research_key = rejection_from_error(event.get("error") or {})
    _discard_partial(services, ref, event)  # it will not be published
    if reason in ("missing", "superseded"):
        # Deleted before it was published (Orthanc drops duplicates, users fix mistakes), or
        # overwritten by a newer version: nothing to keep, so a skip, not a quarantine.
        record_status(services, ref, "skipped", reason=reason, detail=detail)
        return {"source": services.payload(ref), "status": "skipped", "reason": reason}
    record_status(services, ref, "quarantined", reason=reason, detail=detail, research_key=research_key)
    _tag_original(services, ref, reason)
    return {"source": services.payload(ref), "status": "quarantined", "reason": reason}


# The longest an SQS message can be delayed.
MAX_DELAY_SECONDS = 900


def park(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """A failure that says nothing about the content (throttling, a service error, a Lambda that
    could not run or timed out) outlasted the state's retries: the object is not quarantined but
    sent back through the ingest queue, later (a delay that doubles each round), as its own S3
    notification. After `redrive_rounds` rounds it goes to the dead-letter queue instead, whose
    alarm calls an operator, and SQS's DLQ redrive brings it back. What it left half done goes."""
    ref = services.source_of(event)
    error = event.get("error") or {}
    reason = str(error.get("Error", "")) or "unknown"
    _discard_partial(services, ref, event)
    settings = services.settings
    if reason == "OutOfTime" and ref.lane == EXPRESS:  # not slow content: too little time left here
        start_long_lane(services, ref)
        record_status(services, ref, "parked", reason=reason, detail="sent to the long lane (a Standard execution)")
        return {"source": services.payload(ref), "status": "parked", "reason": reason, "lane": LONG}
    if is_throttling(error) and ref.waits < settings.backpressure_waits:
        # Backpressure: a 100,000-object drop meets the functions' reserved concurrency and the
        # services' rates. Not a fault of the object: it waits its turn, without a round counted.
        round_, waits = ref.round, ref.waits + 1
        delay = min(MAX_DELAY_SECONDS, 3 * settings.redrive_delay_seconds)
        detail = f"no capacity: waiting {delay} s ({waits} of {settings.backpressure_waits})"
    else:
        round_, waits = ref.round + 1, ref.waits
        if round_ > settings.redrive_rounds:
            if not settings.dead_letter_queue_url:
                raise RuntimeError("environment variable DEAD_LETTER_QUEUE_URL is not set")
            message = redrive_message(ref, round_, waits)
            services.client("sqs").send_message(QueueUrl=settings.dead_letter_queue_url, MessageBody=message)
            record_status(services, ref, "stalled", reason=reason, detail=f"still failing after {ref.round} redrives")
            return {"source": services.payload(ref), "status": "stalled", "reason": reason, "round": ref.round}
        delay = min(MAX_DELAY_SECONDS, settings.redrive_delay_seconds * 2 ** (round_ - 1))
        detail = f"redrive {round_} of {settings.redrive_rounds} in {delay} s"
    if not settings.ingest_queue_url:
        raise RuntimeError("environment variable INGEST_QUEUE_URL is not set")
    message = redrive_message(ref, round_, waits)
    services.client("sqs").send_message(QueueUrl=settings.ingest_queue_url, MessageBody=message, DelaySeconds=delay)
    record_status(services, ref, "parked", reason=reason, detail=detail)
    return {"source": services.payload(ref), "status": "parked", "reason": reason, "round": round_, "waits": waits}


# The claim attribute WithdrawSource holds while it takes an instance out (the version it withdraws):
# nothing claims or publishes the UID meanwhile.
WITHDRAWING = "withdrawing"
# The status of a published version whose original was deleted (OnSourceDelete remove | keep).
WITHDRAWN, SOURCE_DELETED = "withdrawn", "source_deleted"
# The index item attribute that marks an instance kept in research after its original was deleted.
SOURCE_DELETED_AT = "source_deleted"


def withdraw_source(event: Mapping[str, Any], services: Services) -> dict[str, Any]:
    """An original deleted (a delete marker, or a version deleted for good): what it published is
    taken out of research (OnSourceDelete `remove`: the research object with all its versions, its
    index item, sidecar and emptied catalog rows; the claim released, status `withdrawn`), or kept
    and marked (`keep`: the index item's `source_deleted`, status `source_deleted`).

    Decided on the key's state, not on the event: the claims this object holds are read first,
    then the key's version listing. A live latest version (the delete removed a noncurrent
    version, or the key was uploaded again since) withdraws nothing; if that version is not what
    research shows and it was (the published version itself deleted by id, or an undelete: the
    delete marker of a withdrawn version removed), it is sent through the queue again. Otherwise
    each instance whose claim this object holds goes, conditionally on the claim still naming the
    version and publish generation read: a newer upload published meanwhile is never taken out.
    A withdrawal that failed half way (after taking the claim) is ended first, whatever the key
    holds by then."""
    ref = services.source_of(event)
    rows = _status_rows(services, ref)
    held = _held_claims(services, ref, rows)
    keep = services.settings.on_source_delete == "keep"
    # A withdrawal of this object that failed after it took a claim ends first, whatever the key
    # holds now: its instance is half taken out, and the claim holds the UID until it ends.
    done: list[str] = []
    for uid in sorted(uid for uid, claim in held.items() if WITHDRAWING in claim):
        _take_out(services, ref, uid, held.pop(uid), rows, done, keep=False)
    latest = _latest_entry(services, ref)
    if latest is not None and latest[1] == "Versions":
        live = str(latest[0].get("VersionId") or "null")
        shown = any(claim["published_version"] == live for claim in held.values())
        deleted_was_shown = any(claim["published_version"] == (ref.version_id or "null") for claim in held.values())
        undeleted = (rows.get(live) or {}).get("status") in (WITHDRAWN, SOURCE_DELETED)
        result: dict[str, Any] = {"source": services.payload(ref), "status": "skipped", "reason": "live_version"}
        if not shown and (deleted_was_shown or undeleted):
            current = None if live == "null" else live
            _send_again(services, replace(ref, version_id=current, size=None, round=0, action=DEIDENTIFY))
            result["sent_again"] = True
        if done:
            result = {"source": services.payload(ref), "status": WITHDRAWN, "research_keys": done}
        return result
    if not held and not done:
        return {"source": services.payload(ref), "status": "skipped", "reason": "not_published"}
    for uid, claim in sorted(held.items()):
        _take_out(services, ref, uid, claim, rows, done, keep=keep)
    if not done:  # each claim moved on meanwhile: a newer upload of the key was published
        return {"source": services.payload(ref), "status": "skipped", "reason": "superseded"}
    return {"source": services.payload(ref), "status": SOURCE_DELETED if keep else WITHDRAWN, "research_keys": done}


def _take_out(
    services: Services,
    ref: ObjectRef,
    uid: str,
    claim: Mapping[str, Any],
    rows: Mapping[str, Mapping[str, Any]],
    done: list[str],
    *,
    keep: bool,
) -> None:
    """One instance withdrawn (or marked, `keep`) and its version's status recorded, its research
    key added to `done`; nothing when its claim moved on."""
    version = str(claim["published_version"])
    _index_written(services, uid, claim, rows.get(version) or {})
    if not (_mark_source_deleted(services, uid, claim) if keep else _withdraw_instance(services, ref, uid, claim)):
        return
    research_key = str(claim["research_key"])
    record_status(
        services,
        replace(ref, version_id=None if version == "null" else version),
        SOURCE_DELETED if keep else WITHDRAWN,
        research_key=research_key,
        published_key=None if keep else "",
    )
    done.append(research_key)


def _status_rows(services: Services, ref: ObjectRef) -> dict[str, dict[str, Any]]:
    """The object's status items, by version (a consistent read: a publish just made is in it)."""
    table = services.table(services.settings.status_table)
    rows: dict[str, dict[str, Any]] = {}
    args: dict[str, Any] = {
        "KeyConditionExpression": "object_ref = :ref",
        "ExpressionAttributeValues": {":ref": ref.status_key},
        "ConsistentRead": True,
    }
    while True:
        page = table.query(**args)
        rows.update({str(item["version_id"]): item for item in page.get("Items", [])})
        if "LastEvaluatedKey" not in page:
            return rows
        args["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _held_claims(
    services: Services, ref: ObjectRef, rows: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The research SOP Instance UIDs this object published and still holds, with their claims: the
    UIDs its versions' status items name (`published_key`, kept whatever came after; `research_key`),
    and of those the claims whose holder is this object and that name a published version."""
    uids = set()
    for row in rows.values():
        for field in ("published_key", "research_key"):
            if research_place(str(row.get(field) or "")) is not None:
                uids.add(str(row[field]).rsplit("/", 1)[-1].removesuffix(".dcm"))
    table = services.table(services.settings.status_table)
    held = {}
    for uid in uids:
        claim = table.get_item(Key=_claim_key(uid), ConsistentRead=True).get("Item") or {}
        if claim.get("holder") == ref.status_key and claim.get("published_version") and claim.get("research_key"):
            held[uid] = claim
    return held


def _index_written(services: Services, uid: str, claim: Mapping[str, Any], row: Mapping[str, Any]) -> None:
    """A version published a moment ago may not be indexed yet: its IndexHeader writes the item
    after Publish, and would write it after the withdrawal. Then this waits (the state's retries,
    Park), until the item of the claim's generation is there. A version whose run ended otherwise
    (parked, skipped) writes no index item any more; a withdrawal retried has deleted it already."""
    if row.get("status") != "published" or WITHDRAWING in claim:
        return
    item = (
        services.table(services.settings.index_table)
        .get_item(
            Key={"sop_instance_uid": uid},
            ConsistentRead=True,
            ProjectionExpression="#gen",
            ExpressionAttributeNames={"#gen": PUBLISH_GENERATION},
        )
        .get("Item")
    )
    if item is None or int(item.get(PUBLISH_GENERATION, 0)) < int(claim.get("generation", 0)):
        raise TransientError("the published instance is not indexed yet")


def _withdraw_instance(services: Services, ref: ObjectRef, uid: str, claim: Mapping[str, Any]) -> bool:
    """Take one instance out of research; False when its claim moved on (nothing is touched then).

    The claim is held (`withdrawing`) while the index item, the catalog rows, the sidecar and the
    research object with every version go, so that no upload claims or publishes the UID in
    between; then it is released, its publish generation counted up, for a later upload of the
    same instance (this key again, or another) to publish anew."""
    settings = services.settings
    status = services.table(settings.status_table)
    version = str(claim["published_version"])
    generation = int(claim.get("generation", 0))
    research_key = str(claim["research_key"])
    names = {"#holder": "holder", "#version": "published_version", "#gen": "generation", "#withdrawing": WITHDRAWING}
    try:
        status.update_item(
            Key=_claim_key(uid),
            UpdateExpression="SET #withdrawing = :version",
            ConditionExpression="#holder = :me AND #version = :version AND #gen = :gen",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":me": ref.status_key, ":version": version, ":gen": generation},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return False
    # The index first (it never names an object that is not in the bucket), then the objects. An
    # item of a newer generation cannot be there (the claim counts every publish): if it were, it
    # would be a newer publish's, which this leaves alone, the claim let go again.
    try:
        services.table(settings.index_table).delete_item(
            Key={"sop_instance_uid": uid},
            ConditionExpression="attribute_not_exists(#gen) OR #gen <= :gen",
            ExpressionAttributeNames={"#gen": PUBLISH_GENERATION},
            ExpressionAttributeValues={":gen": generation},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        status.update_item(
            Key=_claim_key(uid),
            UpdateExpression="REMOVE #withdrawing",
            ExpressionAttributeNames={"#withdrawing": WITHDRAWING},
        )
        return False
    _forget_research_instance(services, research_key)
    for key in (research_key, default_sidecar_key(research_key)):
        _delete_every_version(services, settings.research_bucket, key)
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    status.update_item(
        Key=_claim_key(uid),
        UpdateExpression=(
            "REMOVE #holder, #sha, #version, #rk, #withdrawing SET #withdrawn = :version, #at = :now ADD #gen :one"
        ),
        ConditionExpression="#withdrawing = :version",
        ExpressionAttributeNames={
            **names,
            "#sha": "sha256",
            "#rk": "research_key",
            "#withdrawn": "withdrawn_version",
            "#at": "withdrawn_at",
        },
        ExpressionAttributeValues={":version": version, ":now": now, ":one": 1},
    )
    return True


def _mark_source_deleted(services: Services, uid: str, claim: Mapping[str, Any]) -> bool:
    """OnSourceDelete `keep`: the instance stays served, its index item says since when its
    original is gone. Only the item of the claim's generation: a newer publish's item is not marked."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    try:
        services.table(services.settings.index_table).update_item(
            Key={"sop_instance_uid": uid},
            UpdateExpression="SET #deleted = if_not_exists(#deleted, :now)",
            ConditionExpression="attribute_exists(#uid) AND #gen = :gen",
            ExpressionAttributeNames={
                "#deleted": SOURCE_DELETED_AT,
                "#uid": "sop_instance_uid",
                "#gen": PUBLISH_GENERATION,
            },
            ExpressionAttributeValues={":now": now, ":gen": int(claim.get("generation", 0))},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return False
    return True


def _delete_every_version(services: Services, bucket: str, key: str) -> None:
    """Every version and delete marker of `key`: in a versioned bucket a plain delete only hides
    the content behind a marker."""
    paginator = services.s3.get_paginator("list_object_versions")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        for entry in page.get("Versions", []) + page.get("DeleteMarkers", []):
            if entry.get("Key") == key:
                services.s3.delete_object(Bucket=bucket, Key=key, VersionId=entry["VersionId"])


def _discard_partial(services: Services, ref: ObjectRef, event: Mapping[str, Any]) -> None:
    """What a failed object left on the way: its staging copy, and its claim on the research UID
    (others may take it) unless something was published under it. Never the research object or
    its index entry: a failure after Publish is IndexHeader's, which parks, and the redrive
    publishes the same bytes again and indexes them."""
    staged = event.get("staged") or {}
    if staged.get("sop_instance_uid"):
        _release_claim(services, ref, staged["sop_instance_uid"])
    if staged.get("staging_key"):
        services.s3.delete_object(Bucket=services.settings.research_bucket, Key=staged["staging_key"])


# Status fields set when given and kept by every later status of the version (a replayed event
# skipped as superseded, a park): the research key the version published, which WithdrawSource
# looks for when the original is deleted. An empty value removes it (the instance was withdrawn).
STICKY_FIELDS = ("published_key",)


def record_status(services: Services, ref: ObjectRef, status: str, **fields: Any) -> None:
    """One item per object version in the status table: status, reason, timestamps."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    names = {"#status": "status", "#updated": "updated_at", "#first": "first_seen_at"}
    values: dict[str, Any] = {":status": status, ":now": now}
    sets = ["#status = :status", "#updated = :now", "#first = if_not_exists(#first, :now)"]
    removes = []
    for i, name in enumerate(("reason", "detail", "research_key", "same_as", "warnings")):
        names[f"#f{i}"] = name
        if fields.get(name) is not None:
            values[f":f{i}"] = str(fields[name])
            sets.append(f"#f{i} = :f{i}")
        else:
            removes.append(f"#f{i}")  # a reprocessed object drops its old quarantine reason
    for i, name in enumerate(STICKY_FIELDS):
        if fields.get(name) is None:
            continue
        names[f"#s{i}"] = name
        if fields[name] == "":
            removes.append(f"#s{i}")
        else:
            values[f":s{i}"] = str(fields[name])
            sets.append(f"#s{i} = :s{i}")
    expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
    services.table(services.settings.status_table).update_item(
        Key={"object_ref": ref.status_key, "version_id": ref.version_id or "null"},
        UpdateExpression=expression,
        ExpressionAttributeNames=names,
        ExpressionAttributeValues=values,
    )


def _stage(
    services: Services,
    ref: ObjectRef,
    output: Output,
    *,
    needs_pixel_scan: bool,
    direct: bool = False,
) -> dict[str, Any]:
    """Claim the research SOP Instance UID and record the mapping, then publish the output at once
    (`direct`: the header step) or write it to a per-run staging copy for Publish (the redaction
    step: its 4 GB are billed by the millisecond, Publish has 256 MB, and scans are few)."""
    settings = services.settings
    processed = output.processed
    # The header step's common case takes the claim and its publish generation in one request.
    counted = _claim_and_count(services, ref, output) if direct else None
    duplicate_of = _claim(services, ref, output) if counted is None else None
    mapping = {
        "sop_instance_uid": processed.sop_uid,
        "study_instance_uid": processed.study_uid,
        "series_instance_uid": processed.series_uid,
        "patient_id": str(processed.result.dataset.get("PatientID", "") or ""),
        "source_bucket": ref.bucket,
        "source_key": ref.key,
        "source_version_id": ref.version_id or "null",
        **processed.result.originals.columns(),
    }
    if duplicate_of is None:  # the mapping names the first source, which a duplicate is not
        record_mapping(services, {k: v for k, v in mapping.items() if v != ""})
    staged: dict[str, Any] = {
        "research_key": processed.key,
        "study_instance_uid": processed.study_uid,
        "series_instance_uid": processed.series_uid,
        "sop_instance_uid": processed.sop_uid,
        # The rules' labels, decided on the original header: the index keeps them for permission
        # profiles (never returned to researchers). Names only, set by the rules' author.
        "labels": sorted(processed.result.plan.labels - {ALL_LABEL}),
    }
    if duplicate_of is not None:
        staged["duplicate_of"] = duplicate_of
    result: dict[str, Any] = {"source": services.payload(ref), "needs_pixel_scan": needs_pixel_scan}
    if direct:
        return {**result, "staged": staged, **_publish_direct(services, ref, output, staged, counted)}
    # One staging copy per run, not per instance: two runs of one object at once (a redelivered
    # event, one study sent twice) must not share it, or the first Publish deletes what the
    # second is about to copy. A retried run's earlier copy is left to the staging expiry.
    staged["staging_key"] = f"{settings.staging_prefix}{secrets.token_hex(8)}/{processed.key}"
    staged["size"] = output.size  # Publish copies it; S3's CopyObject stops at 5 GiB
    output.put(services.s3, bucket=settings.research_bucket, key=staged["staging_key"])
    record_status(
        services,
        ref,
        "deidentified",
        research_key=processed.key,
        same_as=duplicate_of,
        warnings=",".join(processed.warnings) or None,
    )
    return {**result, "staged": staged}


MAPPING_DIGEST = "mapping_sha256"
REVISION_OF = "revision_of"


def record_mapping(services: Services, mapping: Mapping[str, str]) -> str:
    """Create the mapping row of a pseudonymous SOP Instance UID; never change one. Returns the key written.

    The writers may only create rows: every put is conditional, and the table's resource policy
    denies them UpdateItem, DeleteItem and BatchWriteItem, so a function (or whoever holds its
    role) cannot re-point a pseudonym at another patient through this code path. The same mapping
    put again (a retry, a redelivered event) finds a row with the same digest and changes nothing. A
    different mapping for the same pseudonym (a corrected re-send of the instance: another version,
    a corrected patient ID) does not replace the first: it is kept beside it as a revision row,
    `<uid>#<digest>` with `revision_of: <uid>`, which the honest broker lists with the
    `by_revision_of` index. Nothing is read back (the writers cannot read the table) and nothing is
    logged (every value here is PHI).
    """
    uid = mapping["sop_instance_uid"]
    digest = hashlib.sha256(json.dumps(dict(mapping), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    table = services.table(services.settings.mapping_table)
    condition = "attribute_not_exists(#uid) OR #digest = :digest"
    names = {"#uid": "sop_instance_uid", "#digest": MAPPING_DIGEST}
    for key, extra in ((uid, {}), (f"{uid}#{digest[:32]}", {REVISION_OF: uid})):
        try:
            table.put_item(
                Item={**mapping, **extra, "sop_instance_uid": key, MAPPING_DIGEST: digest},
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues={":digest": digest},
            )
            return key
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
    # Two different mappings hashing to the same 128-bit prefix: not a case to handle, a bug to hear of.
    raise RuntimeError("the mapping revision row exists with another digest")


def _claim_key(sop_uid: str) -> dict[str, str]:
    return {"object_ref": f"sop:{sop_uid}", "version_id": "claim"}


def _claim(services: Services, ref: ObjectRef, output: Output) -> str | None:
    """Claim the research SOP Instance UID for this object (any version of it), first come first
    served. Returns None when it is ours, the holder's reference when this object is a
    byte-identical duplicate of it; raises RejectedObject when the holder has other bytes."""
    table = services.table(services.settings.status_table)
    processed = output.processed
    digest = output.digest()
    names = {"#holder": "holder", "#sha": "sha256", "#at": "claimed_at", "#withdrawing": WITHDRAWING}
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    try:
        table.update_item(
            Key=_claim_key(processed.sop_uid),
            UpdateExpression="SET #holder = :me, #sha = :sha, #at = if_not_exists(#at, :now)",
            # Not while WithdrawSource takes the UID's instance out (it releases the claim after).
            ConditionExpression=(
                "(attribute_not_exists(#holder) OR #holder = :me) AND attribute_not_exists(#withdrawing)"
            ),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={":me": ref.status_key, ":sha": digest, ":now": now},
        )
        return None
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
    try:
        held = table.update_item(
            Key=_claim_key(processed.sop_uid),
            UpdateExpression="ADD #dups :one",
            ConditionExpression="#sha = :sha AND attribute_not_exists(#withdrawing)",
            ExpressionAttributeNames={"#sha": "sha256", "#dups": "duplicates", "#withdrawing": WITHDRAWING},
            ExpressionAttributeValues={":sha": digest, ":one": 1},
            ReturnValues="ALL_OLD",
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        if WITHDRAWING in (exc.response.get("Item") or {}):
            raise TransientError("the research SOP Instance UID is being withdrawn") from None
        raise RejectedObject(
            "sop_instance_uid_conflict",
            "another object holds this SOP Instance UID with other content; the first one is kept",
            research_key=processed.key,
        ) from None
    return str(held.get("Attributes", {}).get("holder", "")) or None


def _claim_and_count(services: Services, ref: ObjectRef, output: Output) -> tuple[int, str | None] | None:
    """`_claim` and `_next_generation` in one UpdateItem (one write unit instead of two) for the
    common case: the UID unclaimed or already this object's, not being withdrawn, and this version
    not yet published under it. Returns (generation, the research key published before) as
    `_next_generation` does; None for any other case (a duplicate, a conflict, a withdrawal, the
    same version again), which the two requests that tell them apart then decide."""
    processed = output.processed
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    try:
        old = (
            services.table(services.settings.status_table)
            .update_item(
                Key=_claim_key(processed.sop_uid),
                UpdateExpression=(
                    "SET #holder = :me, #sha = :sha, #at = if_not_exists(#at, :now), #rk = :rk, #version = :version"
                    " ADD #gen :one"
                ),
                ConditionExpression=(
                    "(attribute_not_exists(#holder) OR #holder = :me) AND attribute_not_exists(#withdrawing)"
                    " AND (attribute_not_exists(#version) OR #version <> :version)"
                ),
                ExpressionAttributeNames={
                    "#holder": "holder",
                    "#sha": "sha256",
                    "#at": "claimed_at",
                    "#rk": "research_key",
                    "#version": "published_version",
                    "#gen": "generation",
                    "#withdrawing": WITHDRAWING,
                },
                ExpressionAttributeValues={
                    ":me": ref.status_key,
                    ":sha": output.digest(),
                    ":now": now,
                    ":rk": processed.key,
                    ":version": ref.version_id or "null",
                    ":one": 1,
                },
                ReturnValues="ALL_OLD",
            )
            .get("Attributes", {})
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise
        return None
    return int(old.get("generation", 0)) + 1, (str(old["research_key"]) if old.get("research_key") else None)


def _release_claim(services: Services, ref: ObjectRef, sop_uid: str) -> None:
    """Give up this object's claim (it is being quarantined or parked), if it holds one and nothing
    is published under it (never was, or was withdrawn): a published instance keeps its source
    until it is withdrawn."""
    try:
        services.table(services.settings.status_table).update_item(
            Key=_claim_key(sop_uid),
            UpdateExpression="REMOVE #holder, #sha",
            ConditionExpression="#holder = :me AND attribute_not_exists(#version)",
            ExpressionAttributeNames={"#holder": "holder", "#sha": "sha256", "#version": "published_version"},
            ExpressionAttributeValues={":me": ref.status_key},
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
            raise


def _still_current(services: Services, ref: ObjectRef) -> None:
    """The event's version must still be the key's current one (`_judge_current`), asked of the
    version listing (s3:ListBucketVersions): Publish, which asks it, may not read the original's
    content, which a HEAD would need (and, for a deleted key, s3:ListBucket to tell 404 from 403).
    The steps that read the original ask with the read itself (`_downloaded(current=True)`)."""
    if ref.version_id:  # an unversioned bucket: the key's one object is what there is
        latest = _latest_entry(services, ref)
        _judge_current(ref, None if latest is None or latest[1] == "DeleteMarkers" else latest[0].get("VersionId"))


def _judge_current(ref: ObjectRef, latest: str | None) -> None:
    """`latest`, the key's current version id (None: deleted), must be the event's version.
    Deleted since (a delete marker on top): nothing is published, whatever the version-pinned read
    could still fetch. Overwritten since: the newer version's own event processes it, and this one
    (late, replayed or redriven) must not bring the older content back."""
    if not ref.version_id:
        return
    if latest is None:
        raise RejectedObject("missing", "the object was deleted before it was published")
    if latest != ref.version_id:
        raise RejectedObject("superseded", "a newer version of the object was uploaded; its own event processes it")


def _latest_entry(services: Services, ref: ObjectRef) -> tuple[dict[str, Any], str] | None:
    """The key's latest version listing entry and its kind ("Versions" or "DeleteMarkers")."""
    # The key sorts first among the keys it prefixes, newest first: its latest entry is in here.
    listed = services.s3.list_object_versions(Bucket=ref.bucket, Prefix=ref.key, MaxKeys=10)
    for kind in ("Versions", "DeleteMarkers"):
        for entry in listed.get(kind, []):
            if entry.get("Key") == ref.key and entry.get("IsLatest"):
                return entry, kind
    return None


def _current_version(services: Services, ref: ObjectRef) -> str | None:
    """The key's current version id from a HEAD naming no version (GET-class: 12.5x cheaper than
    the listing), None when deleted: 404 whether a delete marker is on top or no version is left
    (the reading steps hold s3:ListBucket, so S3 answers 404, not 403)."""
    try:
        head = services.s3.head_object(Bucket=ref.bucket, Key=ref.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
            return None
        raise
    return str(head.get("VersionId") or "null")


@contextmanager
def _original(services: Services, ref: ObjectRef, *, scan_pixels: bool) -> Iterator[Output]:
    """The engine's output for the original version (its source identifiers for the mapping table
    included), valid inside the block: a large one is read as a sparse copy whose spans the write
    copies from the original (streaming.py), never downloaded.

    A Rejected from the engine leaves as RejectedObject (the handler's `workflow_errors` maps it).
    """
    with _downloaded(services, ref, current=True, stream_above=STREAM_OBJECTS_ABOVE) as (path, size):
        if path is not None:
            yield Output(services.engine.process(path, scan_pixels=scan_pixels))
            return
    with streaming.processed_original(services.s3, services.engine, ref, size, scan_pixels=scan_pixels) as (
        processed,
        copy,
    ):
        yield Output(processed, copy, ref)


@contextmanager
def _header_copy(services: Services, ref: ObjectRef) -> Iterator[str]:
    """A research object as a file to index: downloaded, or for a large one a sparse copy with
    its header and frame framing (all the index reads), the pixels left out."""
    with _downloaded(services, ref, stream_above=STREAM_OBJECTS_ABOVE) as (path, size):
        if path is not None:
            yield path
            return
    with streaming.sparse_copy(services.s3, ref, size) as copy:
        yield copy.path


def _passthrough(event: Mapping[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ("source", "needs_pixel_scan", "staged", "pixels", "published") if k in event}


FIRST_READ = streaming.HEADER_PREFIX


def _object_size(answer: Mapping[str, Any]) -> int:
    """The whole object's size, from a ranged answer's Content-Range ("bytes 0-1048575/52428800")."""
    content_range = str(answer.get("ContentRange") or "")
    if "/" in content_range:
        return int(content_range.rsplit("/", 1)[1])
    return int(answer.get("ContentLength") or 0)


@contextmanager
def _downloaded(
    services: Services, ref: ObjectRef, *, current: bool = False, stream_above: int | None = None
) -> Iterator[tuple[str | None, int]]:
    """The object version in a temporary file: /tmp (ephemeral storage) holds it, not the heap.

    One GetObject, streamed: its answer's length is checked before the body is read (no HEAD
    first; s3transfer's download_file made one per read). With `current`, the GET names no
    version, so it reads the key's current one and its answer says which that is: the event's
    version, or a rejection (`_judge_current`: deleted, or superseded, the newer body left
    unread). The check that the version is still current and the read are one GET-class request
    instead of a version LIST (PUT-class, 12.5x the price), a HEAD and a GET.

    The block gets (path, size); an object larger than `stream_above` is not downloaded, and its
    path is None (the caller streams it). Then the GET asks for a first MiB only (all of almost
    every instance; the rest of a larger one is a second GET of the version read), so that a large
    object's body is never sent to be left unread."""
    limit = services.settings.max_object_bytes
    args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id and not current:
        args["VersionId"] = ref.version_id
    first = {"Range": f"bytes=0-{FIRST_READ - 1}"} if stream_above is not None else {}
    try:
        answer = services.s3.get_object(**args, **first)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if current and code in MISSING_CODES:
            _judge_current(ref, None)  # a delete marker on top, or no version left: missing
        if code != "InvalidRange":
            raise
        answer = services.s3.get_object(**args)  # an empty object has no first byte to ask for
    body = answer["Body"]
    fd, path = tempfile.mkstemp(suffix=".dcm")
    try:
        read_version = str(answer.get("VersionId") or "null")
        if current:
            _judge_current(ref, read_version)
        size = _object_size(answer)
        if size > limit:
            raise RejectedObject("too_large", f"{size} bytes is above the pipeline's limit of {limit} bytes")
        if stream_above is not None and size > stream_above:
            yield None, size
            return
        with os.fdopen(fd, "wb") as out:
            fd = -1
            shutil.copyfileobj(body, out, 1024 * 1024)
            if out.tell() < size:
                rest = {"VersionId": read_version} if read_version != "null" else {}
                more = services.s3.get_object(
                    Bucket=ref.bucket, Key=ref.key, **rest, Range=f"bytes={out.tell()}-{size - 1}"
                )
                shutil.copyfileobj(more["Body"], out, 1024 * 1024)
            if out.tell() != size:
                raise OSError("the object's body is not the length its answer declared")
        yield path, size
    finally:
        body.close()
        if fd >= 0:
            os.close(fd)
        os.unlink(path)


def _tag_original(services: Services, ref: ObjectRef, reason: str) -> None:
    """Tags, not a move: the original stays at its key for whoever fixes it; tags make it findable."""
    args: dict[str, Any] = {"Bucket": ref.bucket, "Key": ref.key}
    if ref.version_id:
        args["VersionId"] = ref.version_id
    try:
        existing = services.s3.get_object_tagging(**args)["TagSet"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING_CODES:
            return  # nothing to mark: the object is gone
        raise
    tags = [t for t in existing if t["Key"] not in QUARANTINE_TAG_KEYS]
    tags += [{"Key": "deidflow-status", "Value": "quarantined"}, {"Key": "deidflow-reason", "Value": reason}]
    services.s3.put_object_tagging(**args, Tagging={"TagSet": tags[:10]})
