"""Cohorts and exports: what a researcher asks for, what a job selects, and what it delivers.

A **cohort** is a query (the rules' language on the de-identified header, and QIDO keys) over the
instances the caller may search; its job writes a manifest of UIDs and the attributes asked for.
An **export** takes a cohort, a list of UIDs or a query, and delivers the instances the caller may
export *at run time* (profiles are read again, visibility decided again, just before each copy)
to a destination an administrator registered in one of the caller's profiles:

    export:
      max_instances: 5000                  # per export; the largest of the caller's profiles wins
      destinations:
        - name: managed                    # the managed exports bucket (expires; downloads audited)
        - name: lung-team
          bucket: lung-team-exports        # a team bucket that trusts deidflow's export role
                                           # (and is named in the template's ExportDestinationBuckets)

A profile that allows `export` and says nothing of destinations registers the managed bucket only.
An instance goes to a destination only through profiles that register that destination.

Layout of what an export delivers, under its root (`exports/<job>/` in the managed bucket,
`deidflow-exports/<job>/` in a team bucket):

    studies/<Study>/series/<Series>/instances/<SOP>.dcm          format dicom (server-side copy)
    studies/<Study>/series/<Series>/instances/<SOP>/frames/<n>.png|.jpg   formats png, jpeg
    studies/<Study>/series/<Series>/instances/<SOP>.json         format json (DICOM JSON header)
    manifest.csv                                                  path, bytes, sha256, UIDs, format
    export.json                                                   who, when, what, which profiles, counts

Nothing here calls AWS: `cloud/research_jobs.py` runs these decisions as Step Functions steps.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

from ..rules.query import Query, QueryError, parse_query
from .header import InstanceRecord
from .profiles import Caller, Profile
from .qido import BadQuery, QidoQuery
from .qido import parse_query as parse_qido
from .visibility import Access, visible_in_study

KINDS = ("cohort", "export")
STATUSES = ("QUEUED", "RUNNING", "SUCCEEDED", "FAILED")
FORMATS = ("dicom", "png", "jpeg", "json")
MANAGED = "managed"
DEFAULT_MAX_INSTANCES = 10_000
# What one export step handles: small enough to finish well inside a Lambda's 15 minutes when every
# instance is rendered to PNG, large enough that a 10,000-instance export is 100 steps.
CHUNK_INSTANCES = 100
MAX_ATTRIBUTES = 64
MAX_UIDS = 10_000
# The transfer syntax an export can transcode to: uncompressed, readable by every tool.
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
TRANSCODE_TO = (EXPLICIT_VR_LITTLE_ENDIAN,)
_JOB_ID = re.compile(r"^job-[0-9a-f]{24}$")
_UID = re.compile(r"^[0-9][0-9.]{0,63}$")


class JobRequestError(ValueError):
    """What is wrong with a request, worded for the researcher (the API answers 400 with it)."""


class JobLimitError(JobRequestError):
    """The request is well formed but asks for more than the caller's profiles allow."""


# Our own errors: the request or the profiles must change, so retrying or redriving cannot help.
PERMANENT_ERRORS = ("JobRequestError", "JobLimitError", "GapError")
ENDED_UNSUCCESSFULLY = ("FAILED", "TIMED_OUT", "ABORTED")  # Step Functions execution statuses
MAX_REASON = 500  # characters of a failure's reason, in the job record and the API


def failure_reason(error: str, cause: str, status: str = "FAILED") -> str:
    """What the owner of a failed job is told, from the execution's (or a Catch's) error and cause.

    Our own errors say what to change (their messages hold counts and limits, never UIDs, keys or
    header values); anything else (a step that failed after its retries, a timeout, an abort) is
    worth resuming, and the cause, which can quote a key, is not repeated."""
    if status == "TIMED_OUT":
        return "the job ran out of time; resume it to continue where it stopped"
    if status == "ABORTED":
        return "the job was stopped by an operator; resume it to continue where it stopped"
    if error in PERMANENT_ERRORS:
        try:
            message = json.loads(cause or "{}").get("errorMessage")
        except (ValueError, AttributeError):
            message = None
        if message:
            return str(message)[:MAX_REASON]
    name = error[:200] or "unknown error"  # Step Functions error names are short; keep the reason bounded anyway
    return f"a step failed after its retries ({name}); resume the job to continue where it stopped"


def new_job_id() -> str:
    return "job-" + secrets.token_hex(12)


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


JOB_RECORD_DAYS = 90


def _parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def now_text(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- what a cohort selects -------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """A cohort's query: the rules' query language and QIDO keys, both on the de-identified header."""

    query_text: str = ""
    qido_params: dict[str, list[str]] = field(default_factory=dict)
    attributes: tuple[int, ...] = ()
    query: Query | None = field(default=None, compare=False, repr=False)
    qido: tuple[QidoQuery, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> Selection:
        text = body.get("query") or ""
        if not isinstance(text, str):
            raise JobRequestError("query is text in the rules' query language, e.g. Modality StrEquals CT")
        query = None
        if text.strip():
            try:
                query = parse_query(text)
            except QueryError as exc:
                raise JobRequestError(f"the query cannot be read: {exc}") from None
        raw_qido = body.get("qido") or {}
        if not isinstance(raw_qido, Mapping):
            raise JobRequestError('qido is an object of QIDO-RS keys, e.g. {"Modality": "CT"}')
        params: dict[str, list[str]] = {}
        for name, value in raw_qido.items():
            if name in ("limit", "offset", "includefield", "fuzzymatching"):
                raise JobRequestError(f"qido: {name} is not a matching key (a cohort has no pages)")
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int) for v in values):
                raise JobRequestError(f"qido: {name} takes text values")
            params[str(name)] = [str(v) for v in values]
        qido = tuple(_qido_key(name, values) for name, values in params.items())
        attributes = _attribute_tags(body.get("attributes") or [])
        return cls(text.strip(), params, attributes, query, qido)

    def selects(self, record: InstanceRecord) -> bool:
        # The header adapter answers the query language as a Dataset does (research/header.py).
        if self.query is not None and not self.query.evaluate(record.header):  # type: ignore[arg-type]
            return False
        # An instance carries its study's and series' attributes: each key is matched on it.
        return all(q.may_match(record.json) for q in self.qido)

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query_text,
            "qido": self.qido_params,
            "attributes": [keyword_for_tag(t) or f"{t:08X}" for t in self.attributes],
        }


def _qido_key(name: str, values: list[str]) -> QidoQuery:
    """One QIDO key, at the lowest level that matches it (instance, series, study)."""
    problem = ""
    for level in ("instance", "series", "study"):
        try:
            return parse_qido({name: values}, level)
        except BadQuery as exc:
            problem = problem or str(exc)
    raise JobRequestError(f"qido: {problem}")


def _attribute_tags(names: Any) -> tuple[int, ...]:
    if not isinstance(names, list) or len(names) > MAX_ATTRIBUTES:
        raise JobRequestError(f"attributes is a list of at most {MAX_ATTRIBUTES} keywords or tags")
    tags = []
    for name in names:
        text = str(name).strip()
        if re.fullmatch(r"[0-9A-Fa-f]{8}", text):
            tag = int(text, 16)
        else:
            found = tag_for_keyword(text)
            if found is None:
                raise JobRequestError(f"attributes: {text!r} is neither a DICOM keyword nor a tag")
            tag = int(found)
        tags.append(tag)
    return tuple(dict.fromkeys(tags))


def attribute_value(record: InstanceRecord, tag: int) -> Any:
    """An attribute as a manifest shows it: its values (one value as itself), PN as text; bulk
    data and sequences are not manifest material."""
    element = record.json.get(f"{tag:08X}") or {}
    if element.get("vr") == "SQ" or "BulkDataURI" in element or "InlineBinary" in element:
        return None
    values = [v.get("Alphabetic", "") if isinstance(v, Mapping) else v for v in element.get("Value") or []]
    return None if not values else values[0] if len(values) == 1 else values


def cohort_rows(
    profiles: Sequence[Profile], instances: Sequence[InstanceRecord], selection: Selection
) -> list[dict[str, Any]]:
    """A study's manifest rows: its instances visible under `profiles` that the selection selects.

    `instances` is every instance of one study (a series or study level widens over them)."""
    rows = []
    for record in visible_in_study(profiles, instances):
        if selection.selects(record):
            row: dict[str, Any] = {
                "study": record.study_instance_uid,
                "series": record.series_instance_uid,
                "sop": record.sop_instance_uid,
            }
            if selection.attributes:
                row["attributes"] = {
                    keyword_for_tag(t) or f"{t:08X}": attribute_value(record, t) for t in selection.attributes
                }
            rows.append(row)
    return rows


def row_order(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(row["study"]), str(row["series"]), str(row["sop"]))


def summarize_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    studies: set[str] = set()
    series: set[str] = set()
    count = 0
    for row in rows:
        studies.add(str(row["study"]))
        series.add(str(row["series"]))
        count += 1
    return {"studies": len(studies), "series": len(series), "instances": count}


# -- destinations and limits -----------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where an export is delivered: the managed exports bucket (bucket None) or a team bucket."""

    name: str
    bucket: str | None = None

    @property
    def managed(self) -> bool:
        return self.bucket is None

    def root(self, job_id: str) -> str:
        return f"exports/{job_id}/" if self.managed else f"deidflow-exports/{job_id}/"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "bucket": self.bucket, "managed": self.managed}


def destinations_of(profile: Profile) -> dict[str, Destination]:
    """The destinations a profile registers (the managed bucket when it names none)."""
    listed = profile.export.get("destinations") or [{"name": MANAGED}]
    return {str(d["name"]): Destination(str(d["name"]), d.get("bucket")) for d in listed}


def export_profiles(access: Access, destination: str) -> tuple[Profile, ...]:
    """The caller's profiles that allow export to `destination`."""
    return tuple(p for p in access.allowing("export") if destination in destinations_of(p))


def destination_for(access: Access, name: str, registered_buckets: Iterable[str]) -> Destination:
    """The destination `name`, if one of the caller's export profiles registers it and, for a team
    bucket, the deployment does too (the export role can write nowhere else)."""
    profiles = export_profiles(access, name)
    if not access.allowing("export"):
        raise JobRequestError("none of your profiles allows export: ask your data manager")
    if not profiles:
        known = sorted({d for p in access.allowing("export") for d in destinations_of(p)})
        raise JobRequestError(f"no profile of yours registers the destination {name!r}; yours: {', '.join(known)}")
    chosen = {destinations_of(p)[name] for p in profiles}
    if len(chosen) > 1:
        raise JobRequestError(f"your profiles register {name!r} as different buckets: ask your data manager")
    destination = chosen.pop()
    if destination.bucket is not None and destination.bucket not in set(registered_buckets):
        raise JobRequestError(f"the destination {name!r} is not registered in this deployment: ask your administrator")
    return destination


def export_limit(profiles: Sequence[Profile]) -> int:
    """Instances per export: the largest limit among the profiles that grant the export."""
    return max((int(p.export.get("max_instances") or DEFAULT_MAX_INSTANCES) for p in profiles), default=0)


def available_destinations(access: Access) -> list[dict[str, Any]]:
    """For 'my permissions': each destination the caller may export to, and the limit there."""
    names = sorted({d for p in access.allowing("export") for d in destinations_of(p)})
    return [
        {"name": name, "managed": name == MANAGED, "max_instances": export_limit(export_profiles(access, name))}
        for name in names
    ]


# -- what an export asks for -----------------------------------------------------------------------


@dataclass(frozen=True)
class UidRef:
    study: str
    series: str | None = None
    sop: str | None = None

    def covers(self, record: InstanceRecord) -> bool:
        return (
            record.study_instance_uid == self.study
            and self.series in (None, record.series_instance_uid)
            and self.sop in (None, record.sop_instance_uid)
        )


@dataclass(frozen=True)
class ExportRequest:
    """One of: a cohort (job id), UIDs, or a query; the formats; a transcoding; the destination."""

    destination: str
    formats: tuple[str, ...]
    cohort: str | None = None
    uids: tuple[UidRef, ...] = ()
    selection: Selection | None = None
    transfer_syntax: str | None = None

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> ExportRequest:
        sources = [k for k in ("cohort", "uids", "query", "qido") if body.get(k)]
        if not sources or (len(sources) > 1 and set(sources) != {"query", "qido"}):
            raise JobRequestError("an export takes one of: cohort (a job id), uids (a list), or query/qido")
        formats = body.get("formats") or ["dicom"]
        if not isinstance(formats, list) or not formats or any(f not in FORMATS for f in formats):
            raise JobRequestError(f"formats is a list of: {', '.join(FORMATS)}")
        transfer_syntax = body.get("transfer_syntax") or None
        if transfer_syntax is not None and transfer_syntax not in TRANSCODE_TO:
            raise JobRequestError(
                f"transfer_syntax: exports transcode to {', '.join(TRANSCODE_TO)} (Explicit VR Little Endian) only"
            )
        destination = body.get("destination") or MANAGED
        if not isinstance(destination, str):
            raise JobRequestError("destination is the name of a destination your profile registers")
        cohort = None
        uids: tuple[UidRef, ...] = ()
        selection = None
        if "cohort" in sources:
            cohort = str(body["cohort"])
            if not is_job_id(cohort):
                raise JobRequestError("cohort is the id of one of your cohort jobs (job-...)")
        elif "uids" in sources:
            uids = _uid_refs(body["uids"])
        else:
            selection = Selection.parse(body)
        return cls(destination, tuple(dict.fromkeys(formats)), cohort, uids, selection, transfer_syntax)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"destination": self.destination, "formats": list(self.formats)}
        if self.transfer_syntax:
            out["transfer_syntax"] = self.transfer_syntax
        if self.cohort:
            out["cohort"] = self.cohort
        if self.uids:
            out["uids"] = [{k: v for k, v in vars(u).items() if v} for u in self.uids]
        if self.selection is not None:
            out.update(self.selection.to_json())
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExportRequest:
        return cls.parse(data)


def _uid_refs(raw: Any) -> tuple[UidRef, ...]:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_UIDS:
        raise JobRequestError(f"uids is a list of 1 to {MAX_UIDS} objects with study (and series, sop)")
    refs = []
    for entry in raw:
        if not isinstance(entry, Mapping) or not entry.get("study"):
            raise JobRequestError('every uids entry names its study: {"study": ..., "series": ..., "sop": ...}')
        values = [entry.get(k) for k in ("study", "series", "sop")]
        if any(v is not None and not (isinstance(v, str) and _UID.match(v)) for v in values):
            raise JobRequestError("uids: a UID is digits and dots, at most 64 characters")
        if values[2] and not values[1]:
            raise JobRequestError("uids: an instance (sop) is named with its series")
        refs.append(UidRef(str(values[0]), values[1] or None, values[2] or None))
    return tuple(dict.fromkeys(refs))


# -- the plan and what each step delivers ----------------------------------------------------------


@dataclass(frozen=True)
class PlannedInstance:
    study: str
    series: str
    sop: str
    research_key: str
    frames: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "study": self.study,
            "series": self.series,
            "sop": self.sop,
            "key": self.research_key,
            "frames": self.frames,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedInstance:
        return cls(
            str(data["study"]), str(data["series"]), str(data["sop"]), str(data["key"]), int(data.get("frames") or 1)
        )

    @classmethod
    def of(cls, record: InstanceRecord) -> PlannedInstance:
        return cls(
            record.study_instance_uid,
            record.series_instance_uid,
            record.sop_instance_uid,
            record.research_key,
            record.number_of_frames,
        )


def chunked(items: Sequence[PlannedInstance], size: int = CHUNK_INSTANCES) -> list[list[PlannedInstance]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def instance_path(study: str, series: str, sop: str) -> str:
    return f"studies/{study}/series/{series}/instances/{sop}"


def delivered_path(item: PlannedInstance, fmt: str, frame: int | None = None) -> str:
    base = instance_path(item.study, item.series, item.sop)
    if fmt == "dicom":
        return base + ".dcm"
    if fmt == "json":
        return base + ".json"
    suffix = ".png" if fmt == "png" else ".jpg"
    return f"{base}/frames/{frame}{suffix}"


@dataclass(frozen=True)
class DeliveredFile:
    path: str  # relative to the export's root
    bytes: int
    sha256: str
    format: str
    study: str
    series: str
    sop: str

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeliveredFile:
        return cls(**{k: data[k] for k in ("path", "bytes", "sha256", "format", "study", "series", "sop")})


MANIFEST_COLUMNS = ("path", "bytes", "sha256", "format", "study", "series", "sop")


def manifest_csv(files: Iterable[DeliveredFile]) -> bytes:
    """The manifest a data manager checks an export against (every file, its size and SHA-256)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for f in sorted(files, key=lambda f: f.path):
        writer.writerow([getattr(f, c) for c in MANIFEST_COLUMNS])
    return out.getvalue().encode("utf-8")


def read_manifest_csv(data: bytes) -> list[DeliveredFile]:
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    return [DeliveredFile(**{**r, "bytes": int(r["bytes"])}) for r in rows]  # type: ignore[arg-type]


def header_json(record: InstanceRecord) -> bytes:
    """The de-identified header as DICOM JSON, without the API's bulk data references (an export
    is read without the API)."""

    def strip(data: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for tag, element in data.items():
            element = dict(element)
            element.pop("BulkDataURI", None)
            if element.get("vr") == "SQ" and element.get("Value"):
                element["Value"] = [strip(item) for item in element["Value"]]
            out[tag] = element
        return out

    return json.dumps(strip(record.json), sort_keys=True, separators=(",", ":")).encode("utf-8")


def export_record(
    *,
    job: Mapping[str, Any],
    destination: Destination,
    profiles: Sequence[Profile],
    profiles_versions: Sequence[str],
    counts: Mapping[str, int],
    errors: Sequence[Mapping[str, Any]],
    finished: str,
) -> dict[str, Any]:
    """export.json: who asked, when, for what, under which profiles and approvals, and what came of it."""
    return {
        "job_id": job["job_id"],
        "requested_by": {"sub": job["owner_sub"], "username": job.get("owner", "")},
        "created": job["created"],
        "finished": finished,
        "request": job["request"],
        "profiles": [
            {"name": p.name, "approval": p.approval, "expires": p.expires.isoformat() if p.expires else None}
            for p in profiles
        ],
        "profiles_versions": sorted(set(profiles_versions)),
        "destination": {**destination.to_json(), "root": destination.root(str(job["job_id"]))},
        "counts": dict(counts),
        "errors": list(errors),
        "layout": "studies/<Study>/series/<Series>/instances/<SOP>.dcm; manifest.csv lists every file with its SHA-256",
    }


# -- jobs --------------------------------------------------------------------------------------------


@dataclass
class Job:
    """A cohort or export job as the jobs table holds it (UIDs and query text; never a credential)."""

    job_id: str
    owner_sub: str
    owner: str
    kind: str
    request: dict[str, Any]
    profiles: list[str]
    profiles_version: str
    created: str
    status: str = "QUEUED"
    updated: str = ""
    parts_total: int = 0
    parts_done: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    execution_arn: str = ""
    name: str = ""
    # Who asked, as the token said: the steps decide visibility again at run time for this caller.
    groups: list[str] = field(default_factory=list)
    client_id: str = ""

    @classmethod
    def new(cls, kind: str, caller: Caller, access: Access, request: dict[str, Any], name: str = "") -> Job:
        if kind not in KINDS:
            raise ValueError(kind)
        created = now_text()
        return cls(
            job_id=new_job_id(),
            owner_sub=caller.sub,
            owner=caller.username,
            kind=kind,
            request=request,
            profiles=list(access.names),
            profiles_version=access.version,
            created=created,
            updated=created,
            name=name[:120],
            groups=sorted(caller.groups),
            client_id=caller.client_id,
        )

    @property
    def caller(self) -> Caller:
        return Caller(sub=self.owner_sub, username=self.owner, groups=frozenset(self.groups), client_id=self.client_id)

    def public(self) -> dict[str, Any]:
        """What the API shows its owner."""
        return {
            "id": self.job_id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "created": self.created,
            "updated": self.updated,
            "request": self.request,
            "profiles": self.profiles,
            "progress": {"done": self.parts_done, "total": self.parts_total},
            "counts": self.counts,
            "error": self.error,
        }

    def to_item(self) -> dict[str, Any]:
        item = {
            "job_id": self.job_id,
            "owner_sub": self.owner_sub,
            "owner": self.owner,
            "kind": self.kind,
            "request": json.dumps(self.request, sort_keys=True),
            "profiles": self.profiles,
            "profiles_version": self.profiles_version,
            "created": self.created,
            "updated": self.updated,
            "status": self.status,
            "parts_total": self.parts_total,
            "counts": json.dumps(self.counts, sort_keys=True),
            "name": self.name,
            "groups": self.groups,
            "client_id": self.client_id,
            # The table's TTL: a job's record outlives its files (exports expire sooner), then goes.
            "expires_at": int(_parse_time(self.created).timestamp()) + JOB_RECORD_DAYS * 86_400,
        }
        if self.error:
            item["error"] = self.error
        if self.execution_arn:
            item["execution_arn"] = self.execution_arn
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> Job:
        return cls(
            job_id=str(item["job_id"]),
            owner_sub=str(item["owner_sub"]),
            owner=str(item.get("owner", "")),
            kind=str(item["kind"]),
            request=json.loads(str(item.get("request") or "{}")),
            profiles=[str(p) for p in item.get("profiles") or []],
            profiles_version=str(item.get("profiles_version", "")),
            created=str(item["created"]),
            status=str(item.get("status", "QUEUED")),
            updated=str(item.get("updated", "")),
            parts_total=int(item.get("parts_total") or 0),
            parts_done=len(item.get("parts_done") or ()),
            counts=json.loads(str(item.get("counts") or "{}")),
            error=str(item["error"]) if item.get("error") else None,
            execution_arn=str(item.get("execution_arn", "")),
            name=str(item.get("name", "")),
            groups=[str(g) for g in item.get("groups") or []],
            client_id=str(item.get("client_id", "")),
        )
