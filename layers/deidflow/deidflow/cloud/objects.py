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

import base64
import binascii
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote_plus, unquote_plus

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .budget import BUDGETS, EXPRESS, LONG

SEALED_KEY_PREFIX = "sk1."
_SEAL_INFO = b"deidflow/object-key-seal/v1"
_NONCE_BYTES = 12


class KeySeal:
    """Object keys sealed for the state payloads: AES-GCM under a key derived (HKDF) from the
    object-reference key, with the bucket as associated data.

    A payload is what the execution history shows to anyone with states:GetExecutionHistory and
    what a Map's failure cause may quote; object keys are PHI (folders named after patients). The
    functions that need a key open it; the reference (`ref`) is what names the object in the open.
    Holding the object-reference key, an operator can open one too (`deidflow object-ref`'s key)."""

    def __init__(self, object_ref_key: bytes):
        derived = HKDF(algorithm=SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(object_ref_key)
        self._aead = AESGCM(derived)

    def seal(self, bucket: str, key: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, key.encode(), bucket.encode())
        return SEALED_KEY_PREFIX + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, bucket: str, sealed: str) -> str:
        """The key, or ValueError when `sealed` was not made by this seal for this bucket."""
        if not sealed.startswith(SEALED_KEY_PREFIX):
            raise ValueError("not a sealed object key")
        body = sealed[len(SEALED_KEY_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], bucket.encode()).decode()
        except (InvalidTag, binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("the sealed object key does not open with this key and bucket") from exc


# ObjectRef.action: an upload (ObjectCreated), a delete (ObjectRemoved).
DEIDENTIFY, WITHDRAW = "deidentify", "withdraw"


@dataclass(frozen=True)
class ObjectRef:
    """A pointer to one object version: what the states pass instead of DICOM bytes.

    `ref` is the object's keyed reference (pseudonym.object_ref), computed once where the object
    enters (ExpandBatch) and carried from there: what logs and the status table name the object
    by, since the key itself is PHI. In a payload the key travels sealed (`sealed_key`, KeySeal),
    never in clear."""

    bucket: str
    key: str
    version_id: str | None = None
    size: int | None = None
    ref: str | None = None
    # Redrive rounds so far: a transient failure that outlasted the retries parks the object, which
    # comes back through the queue with its round counted (Park's message, `deidflow.round`).
    round: int = 0
    # Waits for capacity so far: a throttled object (backpressure) comes back without a round counted.
    waits: int = 0
    # The sealed form this object arrived with, reused on the way out (one seal per object, not
    # one per state); not part of the object's identity.
    sealed_key: str | None = field(default=None, compare=False, repr=False)
    # The SQS message it came in: what the execution names in `batchItemFailures` when the object
    # could not even be parked, so that the Pipe retries that message only.
    message_id: str | None = field(default=None, compare=False)
    # Its lane and, in the express lane, its deadline (budget.py): how long each state may take.
    lane: str = field(default=EXPRESS, compare=False)
    deadline: float | None = field(default=None, compare=False)
    # What the workflow does with it, which the state machine's first Choice reads: DEIDENTIFY an
    # upload, WITHDRAW what an ObjectRemoved record's original published.
    action: str = DEIDENTIFY

    def as_payload(self, seal: KeySeal) -> dict[str, Any]:
        """The `source` of a state payload: everything but the key, which is sealed."""
        out: dict[str, Any] = {
            "bucket": self.bucket,
            "sealed_key": self.sealed_key or seal.seal(self.bucket, self.key),
            "version_id": self.version_id,
            "size": self.size,
            "ref": self.ref,
        }
        if self.round:
            out["round"] = self.round
        if self.waits:
            out["waits"] = self.waits
        if self.message_id:
            out["message_id"] = self.message_id
        out["action"] = self.action
        out["lane"] = self.lane
        out["budget"] = BUDGETS[self.lane]  # each Task's TimeoutSecondsPath
        if self.deadline is not None:
            out["deadline"] = self.deadline
        return out

    @classmethod
    def from_payload(cls, event: Mapping[str, Any], seal: KeySeal) -> ObjectRef:
        """From a payload's `source` (or the source itself). A key in clear is accepted too: hand-made
        events (a test, an operator's `sam local invoke`); the states never write one."""
        source = event.get("source", event)
        bucket = str(source["bucket"])
        sealed = source.get("sealed_key")
        return cls(
            bucket=bucket,
            key=seal.open(bucket, str(sealed)) if sealed else str(source["key"]),
            version_id=source.get("version_id") or None,
            size=int(source["size"]) if source.get("size") is not None else None,
            ref=source.get("ref") or None,
            round=int(source.get("round") or 0),
            waits=int(source.get("waits") or 0),
            sealed_key=str(sealed) if sealed else None,
            message_id=source.get("message_id") or None,
            lane=LONG if source.get("lane") == LONG else EXPRESS,
            deadline=float(source["deadline"]) if source.get("deadline") is not None else None,
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
        """What a skip shows: its reason and the object's reference, no key (nothing after it needs one)."""
        source = None
        if self.ref is not None:
            source = {"bucket": self.ref.bucket, "version_id": self.ref.version_id, "ref": self.ref.ref}
        return {"reason": self.reason, "source": source, "message_id": self.message_id}


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
        redrive = redrive if isinstance(redrive, Mapping) else {}
        round_ = int(redrive.get("round") or 0)
        waits = int(redrive.get("waits") or 0)
        lane = LONG if redrive.get("lane") == LONG else EXPRESS
        for record in records:
            ref = _ref_from_record(record)
            if ref is not None:
                ref = replace(ref, round=round_, waits=waits, message_id=message_id, lane=lane)
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


def redrive_message(ref: ObjectRef, round_: int, waits: int | None = None) -> str:
    """The queue message that brings a parked object back: S3's own notification shape (what
    parse_batch reads), for that version, with the redrive round, its waits for capacity (and a
    long lane) under `deidflow`. A parked withdrawal comes back as one (`ObjectRemoved:Redrive`)."""
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
    ours: dict[str, Any] = {"round": round_}
    if waits:
        ours["waits"] = waits
    if ref.lane == LONG:
        ours["lane"] = LONG
    return json.dumps({"Records": [record], "deidflow": ours}, sort_keys=True)


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
