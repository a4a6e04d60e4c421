"""The end state a workflow run must reach, however it got there (faults, retries, parks,
redrives, in any order): what the fault tests and the soak check.

Written against what the workflow promises, not how the steps do it, so that it holds whatever
the order of the states: every instance published once, under one research key, indexed under
that key, its status `published` (its byte-identical copies `duplicate`, naming it), its claim
held by it; every instance whose original was deleted after publishing withdrawn (nothing of it
in research, its status `withdrawn`, no claim held by it); every object that cannot be made safe
quarantined with the reason its content gives; nothing else left behind (queue, dead-letter
queue, status items); no object key and no planted header value in a log line, a metric document
or a status item.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from deidflow.cloud.objects import SEALED_KEY_PREFIX
from deidflow.testing.synthetic import UID_PREFIX

# Reasons that say nothing about the content: an object ending with one was failed by the workflow.
TRANSIENT_REASONS = frozenset({"retries_exhausted", "step_failed", "missing", "superseded"})
TRANSIENT_STATUSES = frozenset({"parked", "stalled", "deidentified", "skipped"})


@dataclass
class Dropped:
    """An object the test put into the drop folder, and what must become of it: `publish` (a
    distinct instance), `copy_of` another dropped key (byte-identical: one of them published, the
    others duplicates of it), `quarantine` with that content reason, or `withdrawn` (published,
    then its original deleted, with OnSourceDelete remove)."""

    key: str
    data: bytes
    copy_of: str | None = None
    quarantine: str | None = None
    withdrawn: bool = False


@dataclass
class EndState:
    problems: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def check(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)


def queue_counts(workflow, url: str) -> tuple[int, int]:
    attrs = workflow.sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def end_state(workflow, dropped: list[Dropped], reports) -> EndState:
    """Every problem with the end state (all of them, so that a soak says everything it found)."""
    state = EndState()
    check = state.check
    failed = [r.execution_arn.rsplit(":", 1)[-1] for r in reports if r.status != "SUCCEEDED"]
    check(not failed, f"{len(failed)} executions did not succeed")
    check(queue_counts(workflow, workflow.queue_url) == (0, 0), "messages left on the ingest queue")
    check(queue_counts(workflow, workflow.dead_letter_queue_url) == (0, 0), "messages in the dead-letter queue")

    bucket = workflow.names.research_bucket
    research = workflow.research_objects()
    index = workflow.table_items(workflow.names.index_table)
    indexed = Counter(str(i["research_key"]) for i in index)
    check(set(indexed) == set(research), f"index and bucket differ: {len(set(indexed) ^ set(research))} keys")
    check(max(indexed.values(), default=1) == 1, "a research key indexed twice")
    sops = Counter(key.rsplit("/", 1)[-1] for key in research)
    check(max(sops.values(), default=1) == 1, "one SOP Instance UID under two research keys")

    # The status items, by reference and version (the table holds no keys).
    items = {(i["object_ref"], i["version_id"]): i for i in workflow.table_items(workflow.names.status_table)}
    claims = {ref[len("sop:") :]: i for (ref, _), i in items.items() if ref.startswith("sop:")}
    groups: dict[str, list[Dropped]] = {}
    for d in dropped:
        if d.quarantine is None and not d.withdrawn:
            groups.setdefault(d.copy_of or d.key, []).append(d)

    def status_of(key: str) -> dict:
        listed = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket, Prefix=key)["Versions"]
        [latest] = [v for v in listed if v["Key"] == key and v["IsLatest"]]
        return items.get((workflow.object_ref(key), latest["VersionId"]), {})

    seen_refs = set()
    expected_research = 0
    for members in groups.values():
        expected_research += 1
        found = {m.key: status_of(m.key) for m in members}
        seen_refs |= {workflow.object_ref(m.key) for m in members}
        statuses = Counter(str(s.get("status")) for s in found.values())
        state.counts.update(f"status {s}" for s in statuses.elements())
        published = [k for k, s in found.items() if s.get("status") == "published"]
        check(
            statuses == Counter({"published": 1, "duplicate": len(members) - 1}),
            f"an instance's {len(members)} objects ended {dict(statuses)}, not one published and the rest duplicates"
            + "".join(f"; {s.get('status')}: {s.get('reason')} ({s.get('detail')})" for s in found.values()),
        )
        if len(published) != 1:
            continue
        holder = workflow.object_ref(published[0])
        research_key = str(found[published[0]].get("research_key"))
        check(research_key in research, "a published object's research key is not in the bucket")
        for key, status in found.items():
            check(status.get("research_key") == research_key, "copies of one instance name other research keys")
            if key != published[0]:
                check(status.get("same_as") == holder, "a duplicate does not name the published object")
        sop = research_key.rsplit("/", 1)[-1].removesuffix(".dcm")
        check(claims.get(sop, {}).get("holder") == holder, "a published instance's claim is not held by it")
    check(len(research) == expected_research, f"{len(research)} research objects for {expected_research} instances")

    for d in dropped:
        if d.quarantine is None:
            continue
        seen_refs.add(workflow.object_ref(d.key))
        status = status_of(d.key)
        state.counts[f"status {status.get('status')}"] += 1
        check(
            (status.get("status"), status.get("reason")) == ("quarantined", d.quarantine),
            f"a {d.quarantine} object ended {status.get('status')}: {status.get('reason')} ({status.get('detail')})",
        )
        check(status.get("reason") not in TRANSIENT_REASONS, "quarantined for a reason that is not its content's")
        tags = workflow.s3.get_object_tagging(Bucket=workflow.names.ingest_bucket, Key=d.key).get("TagSet", [])
        check({"Key": "deidflow-reason", "Value": d.quarantine} in tags, "a quarantined original is not tagged")

    for d in dropped:
        if not d.withdrawn:
            continue
        ref = workflow.object_ref(d.key)
        seen_refs.add(ref)
        listed = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket, Prefix=d.key)
        versions = [v for v in listed.get("Versions", []) if v["Key"] == d.key]
        check(not any(v["IsLatest"] for v in versions), "a withdrawn object's key still has a live version")
        withdrawn = [i for (r, _), i in items.items() if r == ref and i.get("status") == "withdrawn"]
        state.counts["status withdrawn"] += len(withdrawn)
        check(len(withdrawn) == 1, f"a deleted original has {len(withdrawn)} withdrawn versions, not one")
        check(all("published_key" not in i for i in withdrawn), "a withdrawn version still names what it published")
        check(not any(c.get("holder") == ref for c in claims.values()), "a deleted original still holds a claim")
        # What it published is gone: the research objects were counted against the instances above.

    strays = {ref for ref, _ in items if not ref.startswith("sop:")} - seen_refs
    check(not strays, f"{len(strays)} status items of objects nobody dropped")
    # A retried de-identification leaves its earlier staging copy to the staging expiry: allowed
    # only as a byte-identical copy of what was published.
    staging = workflow.research_objects(prefix=workflow.environment["STAGING_PREFIX"])
    state.counts["staging leftovers"] = len(staging)
    for key, data in staging.items():
        published_key = "studies/" + key.split("/studies/", 1)[-1]
        check(research.get(published_key) == data, f"a staging leftover that is not what was published ({bucket})")
    return state


def phi_needles(planted: Iterable[str], ingest_prefix: str) -> list[str]:
    """Strings that must never appear where objects are named by reference: the ingest prefix,
    which every key starts with (the tests name folders after patients, whose names are planted
    too, so a key's parts are caught as well); each planted value with the digits at its ends cut
    (`Quixfeldt3` is caught as `Quixfeldt`: one needle covers every patient, and thousands of
    keys and values are searched for in a few dozen passes); the test's UID root (every original
    UID). Bare dates and numbers are left out: version ids and request ids are random hex, which
    an 8-digit date would match by chance."""
    needles = {UID_PREFIX, ingest_prefix}
    for value in planted:
        if value.startswith(UID_PREFIX):
            continue
        stem = re.sub(r"^\d+|\d+$", "", value).strip()
        if len(stem) >= 3 and not stem.replace(".", "").isdigit():
            needles.add(stem)
    return sorted(needles)


def leaks(text: str, needles: Iterable[str]) -> list[str]:
    """The needles found in `text`, sealed object keys left out: those are AES-GCM ciphertext in
    base64url (cloud/objects.py KeySeal), whose random letters hold a 3-letter stem like `MRN` by
    chance once in a few hundred thousand characters."""
    text = SEALED_KEY.sub(SEALED_KEY_PREFIX, text)
    return [n for n in needles if n in text]


SEALED_KEY = re.compile(re.escape(SEALED_KEY_PREFIX) + r"[A-Za-z0-9_-]+")


def as_text(value: object) -> str:
    return json.dumps(value, default=str)
