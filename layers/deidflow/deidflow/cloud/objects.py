"""Which objects a batch of queue messages asks us to process, and which it asks us to skip.

The queue carries S3 event notifications. A message may hold several records, none (the test
event S3 sends when a notification is configured), or records for things that are not DICOM
instances (folder markers, the `.json` attachments Orthanc's storage plugin may write). Those are
skipped with a reason, not failed: they are not errors, and retrying them would not help.

An `ObjectRemoved` record (a delete marker, or a version deleted for good) is an object to
withdraw (`action` "withdraw"): WithdrawSource decides from the key's current state, not from the
event, whether its published instance goes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import quote_plus, unquote_plus

# ObjectRef.action: an upload (ObjectCreated), a delete (ObjectRemoved).
DEIDENTIFY, WITHDRAW = "deidentify", "withdraw"


@dataclass(frozen=True)
class ObjectRef:
    """A pointer to one object version: what the states pass instead of DICOM bytes.

    `ref` is the object's keyed reference (pseudonym.object_ref), computed once where the object
    enters (ExpandBatch) and carried from there: what logs and the status table name the object
    by, since the key itself is PHI."""

    bucket: str
    key: str
    version_id: str | None = None
    size: int | None = None
    ref: str | None = None
    # Redrive rounds so far: a transient failure that outlasted the retries parks the object, which
    # comes back through the queue with its round counted (Park's message, `deidflow.round`).
    round: int = 0
    # What the workflow does with it, which the state machine's first Choice reads: DEIDENTIFY an
    # upload, WITHDRAW what an ObjectRemoved record's original published.
    action: str = DEIDENTIFY

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.round:
            del out["round"]
        return out

    @classmethod
    def from_event(cls, event: Mapping[str, Any]) -> ObjectRef:
        source = event.get("source", event)
        return cls(
            bucket=str(source["bucket"]),
            key=str(source["key"]),
            version_id=source.get("version_id") or None,
            size=int(source["size"]) if source.get("size") is not None else None,
            ref=source.get("ref") or None,
            round=int(source.get("round") or 0),
            action=str(source.get("action") or DEIDENTIFY),
        )

    @property
    def status_key(self) -> str:
        """The status table's partition key (`object_ref`): the keyed reference, never the key
        (the version is the sort key)."""
        if not self.ref:
            raise ValueError("the object has no reference (source.ref); ExpandBatch gives every object one")
        return self.ref


@dataclass(frozen=True)
class Skipped:
    reason: str  # stable code: s3_test_event, folder, not_an_instance, not_object_created, unreadable_message
    ref: ObjectRef | None = None
    message_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "source": self.ref.as_dict() if self.ref else None,
            "message_id": self.message_id,
        }


@dataclass(frozen=True)
class Batch:
    objects: list[ObjectRef]
    skipped: list[Skipped]


def parse_batch(messages: Iterable[Mapping[str, Any]], skip_suffixes: Iterable[str]) -> Batch:
    """Objects to process or withdraw (in order, each object version and action once) and what was
    skipped, from SQS records.

    Accepts what an EventBridge Pipe sends a state machine from an SQS source: a list of messages
    with a JSON `body` holding the S3 notification.
    """
    suffixes = tuple(s.lower() for s in skip_suffixes if s)
    objects: list[ObjectRef] = []
    skipped: list[Skipped] = []
    seen: set[tuple[str, str, str | None, str]] = set()
    for message in messages:
        message_id = message.get("messageId")
        body = message.get("body", message)
        try:
            notification = json.loads(body) if isinstance(body, str) else dict(body)
        except (ValueError, TypeError):
            skipped.append(Skipped("unreadable_message", message_id=message_id))
            continue
        if notification.get("Event") == "s3:TestEvent":
            skipped.append(Skipped("s3_test_event", message_id=message_id))
            continue
        records = notification.get("Records")
        if not isinstance(records, list):
            skipped.append(Skipped("unreadable_message", message_id=message_id))
            continue
        redrive = notification.get("deidflow")
        round_ = int(redrive.get("round") or 0) if isinstance(redrive, Mapping) else 0
        for record in records:
            ref = _ref_from_record(record)
            if ref is not None and round_:
                ref = replace(ref, round=round_)
            if ref is None:
                skipped.append(Skipped("unreadable_message", message_id=message_id))
                continue
            reason = _skip_reason(record, ref, suffixes)
            if reason:
                skipped.append(Skipped(reason, ref, message_id))
                continue
            if _is_removal(record):
                ref = replace(ref, action=WITHDRAW)
            identity = (ref.bucket, ref.key, ref.version_id, ref.action)
            if identity not in seen:  # the same delivery twice in one batch is processed once
                seen.add(identity)
                objects.append(ref)
    return Batch(objects, skipped)


def redrive_message(ref: ObjectRef, round_: int) -> str:
    """The queue message that brings a parked object back: S3's own notification shape (what
    parse_batch reads), for that version, with the redrive round under `deidflow`. A parked
    withdrawal comes back as one (`ObjectRemoved:Redrive`)."""
    obj: dict[str, Any] = {"key": quote_plus(ref.key, safe="/")}
    if ref.version_id:
        obj["versionId"] = ref.version_id
    if ref.size is not None:
        obj["size"] = ref.size
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectRemoved:Redrive" if ref.action == WITHDRAW else "ObjectCreated:Redrive",
        "s3": {"bucket": {"name": ref.bucket}, "object": obj},
    }
    return json.dumps({"Records": [record], "deidflow": {"round": round_}}, sort_keys=True)


def _ref_from_record(record: Mapping[str, Any]) -> ObjectRef | None:
    try:
        s3 = record["s3"]
        obj = s3["object"]
        return ObjectRef(
            bucket=str(s3["bucket"]["name"]),
            # Keys arrive URL-encoded, spaces as '+'.
            key=unquote_plus(str(obj["key"])),
            version_id=obj.get("versionId") or None,
            size=int(obj["size"]) if obj.get("size") is not None else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _is_removal(record: Mapping[str, Any]) -> bool:
    """ObjectRemoved:Delete (a version deleted for good, or the key of an unversioned bucket) and
    ObjectRemoved:DeleteMarkerCreated (a delete on a versioned bucket) alike."""
    return str(record.get("eventName", "")).startswith("ObjectRemoved")


def _skip_reason(record: Mapping[str, Any], ref: ObjectRef, suffixes: tuple[str, ...]) -> str | None:
    if not str(record.get("eventName", "")).startswith("ObjectCreated") and not _is_removal(record):
        return "not_object_created"
    if ref.key.endswith("/"):
        return "folder"
    if suffixes and ref.key.lower().endswith(suffixes):
        return "not_an_instance"
    return None
