"""Cohort and export jobs at the AWS edge: the steps of both state machines, and what the API asks of them.

State machines (statemachines/cohort.asl.json, export.asl.json; Standard, Distributed Map):

    cohort:  begin -> segment x N (catalog scan segments) -> cohort_finish        (fail on any error)
    export:  begin -> [segment x N, when the export is a query] -> plan -> chunk x M -> export_finish

Every step is idempotent, so a retried step or a resumed job (a new execution of the same job, or
the console's redrive) finishes without duplicates or gaps: segment parts and chunk results have
fixed keys, a plan once written is reused, a chunk whose results exist is not copied again, and
the finish step refuses to finish while a chunk's results are missing.

Payloads carry the job id and small counts only; the request, the UIDs and the results live in
the jobs table and the exports bucket. Logs name the step, the job id and counts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from ..research.header import InstanceRecord
from ..research.jobs import (
    CHUNK_INSTANCES,
    ENDED_UNSUCCESSFULLY,
    DeliveredFile,
    Destination,
    ExportRequest,
    Job,
    JobLimitError,
    JobRequestError,
    PlannedInstance,
    Selection,
    chunked,
    cohort_rows,
    delivered_path,
    destination_for,
    export_limit,
    export_profiles,
    export_record,
    failure_reason,
    header_json,
    is_job_id,
    manifest_csv,
    now_text,
    row_order,
    summarize_rows,
)
from ..research.profiles import ProfilesFile
from ..research.rendered import RenderError, render
from ..research.visibility import Access, visible_in_study
from .services import environment_reader

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "deidflow-research-jobs"))

EVENT_SOURCE = "deidflow.research"
JOB_FAILED_ERROR = "JobFailed"  # the Error of the state machines' Fail state, after their Catch
EVENT_DETAIL_TYPE = "Research Job Completed"
DEFAULT_SEGMENTS = 8


class GapError(RuntimeError):
    """A chunk's results are missing when the export is finished: resume the job."""


@dataclass(frozen=True)
class JobsSettings:
    research_bucket: str
    index_table: str
    catalog_table: str
    profiles_bucket: str
    profiles_key: str
    jobs_table: str
    exports_bucket: str
    export_buckets: tuple[str, ...]
    event_bus: str
    segments: int = DEFAULT_SEGMENTS
    chunk_instances: int = CHUNK_INSTANCES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> JobsSettings:
        need = environment_reader(env)
        values = os.environ if env is None else env
        return cls(
            research_bucket=need("RESEARCH_BUCKET"),
            index_table=need("INDEX_TABLE"),
            catalog_table=need("CATALOG_TABLE"),
            profiles_bucket=need("PROFILES_BUCKET"),
            profiles_key=need("PROFILES_KEY"),
            jobs_table=need("JOBS_TABLE"),
            exports_bucket=need("EXPORTS_BUCKET"),
            export_buckets=tuple(b for b in (values.get("EXPORT_BUCKETS") or "").split(",") if b.strip()),
            event_bus=values.get("EVENT_BUS_NAME") or "default",
            segments=int(values.get("COHORT_SEGMENTS") or DEFAULT_SEGMENTS),
            chunk_instances=int(values.get("EXPORT_CHUNK_INSTANCES") or CHUNK_INSTANCES),
        )


# -- the jobs table ----------------------------------------------------------------------------------


class JobStore:
    """The jobs table: one item per job, listed per owner (GSI by_owner)."""

    def __init__(self, table: Any):
        self._table = table

    def put(self, job: Job) -> None:
        self._table.put_item(Item=job.to_item(), ConditionExpression="attribute_not_exists(job_id)")

    def get(self, job_id: str) -> Job | None:
        item = self._table.get_item(Key={"job_id": job_id}, ConsistentRead=True).get("Item")
        return None if item is None else Job.from_item(item)

    def owned(self, owner_sub: str, limit: int = 100) -> list[Job]:
        answer = self._table.query(
            IndexName="by_owner",
            KeyConditionExpression="owner_sub = :o",
            ExpressionAttributeValues={":o": owner_sub},
            ScanIndexForward=False,
            Limit=limit,
        )
        return [Job.from_item(i) for i in answer.get("Items", [])]

    def update(self, job_id: str, **fields: Any) -> None:
        fields["updated"] = now_text()
        names = {f"#{k}": k for k in fields}
        values = {f":{k}": (json.dumps(v, sort_keys=True) if k == "counts" else v) for k, v in fields.items()}
        expression = "SET " + ", ".join(f"#{k} = :{k}" for k in fields)
        if fields.get("status") == "SUCCEEDED":  # a resumed or redriven job: its old error is history
            expression += " REMOVE #error"
            names["#error"] = "error"
        self._table.update_item(
            Key={"job_id": job_id},
            UpdateExpression=expression,
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ConditionExpression="attribute_exists(job_id)",
        )

    def restart(self, job_id: str, execution_arn: str, status: str = "QUEUED") -> None:
        """A resumed job runs again: its error goes, what it finished stays."""
        self._table.update_item(
            Key={"job_id": job_id},
            UpdateExpression="SET #s = :s, execution_arn = :e, updated = :u REMOVE #err",
            ExpressionAttributeNames={"#s": "status", "#err": "error"},
            ExpressionAttributeValues={":s": status, ":e": execution_arn, ":u": now_text()},
        )

    def fail_running(self, job_id: str, execution_arn: str, reason: str) -> bool:
        """Marks the job FAILED if that execution is still its current one and it still runs: the
        one who flips it (of a Catch and the execution's status-change event) announces it."""
        try:
            self._table.update_item(
                Key={"job_id": job_id},
                UpdateExpression="SET #s = :f, #err = :r, updated = :u",
                ConditionExpression="execution_arn = :e AND #s IN (:q, :run)",
                ExpressionAttributeNames={"#s": "status", "#err": "error"},
                ExpressionAttributeValues={
                    ":f": "FAILED",
                    ":r": reason,
                    ":u": now_text(),
                    ":e": execution_arn,
                    ":q": "QUEUED",
                    ":run": "RUNNING",
                },
            )
        except self._table.meta.client.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def part_done(self, job_id: str, part: int) -> None:
        # A number set: a retried part adds itself once.
        self._table.update_item(
            Key={"job_id": job_id},
            UpdateExpression="ADD parts_done :p SET updated = :u",
            ExpressionAttributeValues={":p": {part}, ":u": now_text()},
        )


# -- the exports bucket's working files --------------------------------------------------------------


def segment_key(job_id: str, segment: int) -> str:
    return f"jobs/{job_id}/cohort/segment-{segment:05d}.jsonl"


def plan_key(job_id: str) -> str:
    return f"jobs/{job_id}/plan/plan.json"


def chunks_key(job_id: str) -> str:
    return f"jobs/{job_id}/plan/chunks.json"


def chunk_plan_key(job_id: str, chunk: int) -> str:
    return f"jobs/{job_id}/plan/chunk-{chunk:05d}.json"


def chunk_results_key(job_id: str, chunk: int) -> str:
    return f"jobs/{job_id}/results/chunk-{chunk:05d}.jsonl"


def job_manifest_key(job_id: str) -> str:
    """Where the API reads an export's manifest: the managed export's own, and for a team bucket
    (which deidflow cannot read) a copy at the same place (the API may read exports/* only)."""
    return f"exports/{job_id}/manifest.csv"


def cohort_manifest_key(job_id: str) -> str:
    return f"cohorts/{job_id}/manifest.jsonl"


def cohort_summary_key(job_id: str) -> str:
    return f"cohorts/{job_id}/cohort.json"


def _json_lines(rows: Iterable[Mapping[str, Any]]) -> bytes:
    return "".join(json.dumps(r, sort_keys=True, separators=(",", ":")) + "\n" for r in rows).encode("utf-8")


def _read_json_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


# -- the steps ---------------------------------------------------------------------------------------


class JobSteps:
    """One container's steps: clients built once, profiles and index read afresh by every step
    (visibility is decided at run time, not when the job was asked for)."""

    def __init__(self, settings: JobsSettings, session: Any = None, clock: Any = None):
        import boto3
        from botocore.config import Config

        from .research_api import DynamoResearchIndex, ProfilesSource

        session = session or boto3.session.Session()
        self.settings = settings
        self.s3 = session.client("s3", config=Config(signature_version="s3v4"))
        self.events = session.client("events")
        dynamodb = session.resource("dynamodb")
        self.jobs = JobStore(dynamodb.Table(settings.jobs_table))
        self.catalog = dynamodb.Table(settings.catalog_table)
        self.index = DynamoResearchIndex(
            dynamodb,
            self.s3,
            index_table=settings.index_table,
            catalog_table=settings.catalog_table,
            research_bucket=settings.research_bucket,
            cache_seconds=0.0,  # a job decides on the index as it is now
        )
        # Checked on every step (a HEAD; a GET when the file changed): a narrowed profile applies
        # to the next step, not to the next container.
        self._profiles = ProfilesSource(self.s3, settings.profiles_bucket, settings.profiles_key, recheck_seconds=0.0)
        self.today = clock or (lambda: datetime.now(UTC))

    def handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        # The state machines' own "Execution Status Change" events (an EventBridge rule) carry no step.
        step = "execution_changed" if event.get("source") == "aws.states" else str(event.get("step", ""))
        run = {
            "begin": self.begin,
            "segment": self.segment,
            "cohort_finish": self.cohort_finish,
            "plan": self.plan,
            "chunk": self.chunk,
            "export_finish": self.export_finish,
            "fail": self.fail,
            "execution_changed": self.execution_changed,
        }.get(step)
        if run is None:
            raise ValueError(f"unknown step {step!r}")
        result = run(event)
        logger.info("research_job_step", extra={"step": step, "job_id": event.get("job_id"), **_counts(result)})
        return result

    # -- shared ------------------------------------------------------------------------------

    def _job(self, event: Mapping[str, Any]) -> Job:
        job = self.jobs.get(str(event["job_id"]))
        if job is None:
            raise JobRequestError("the job is gone")
        return job

    def _access(self, job: Job) -> tuple[Access, ProfilesFile]:
        profiles = self._profiles.current()
        return Access.of(job.caller, profiles, self.today().date()), profiles

    def _put(self, key: str, body: bytes, content_type: str, bucket: str | None = None) -> None:
        self.s3.put_object(Bucket=bucket or self.settings.exports_bucket, Key=key, Body=body, ContentType=content_type)

    def _get(self, key: str, bucket: str | None = None) -> bytes | None:
        try:
            answer = self.s3.get_object(Bucket=bucket or self.settings.exports_bucket, Key=key)
        except self.s3.exceptions.NoSuchKey:
            return None
        return bytes(answer["Body"].read())

    def _segments(self, job: Job) -> list[dict[str, Any]]:
        total = max(1, self.settings.segments)
        return [{"step": "segment", "job_id": job.job_id, "segment": i, "total": total} for i in range(total)]

    def _emit(self, job: Job, status: str, counts: Mapping[str, int]) -> None:
        self.events.put_events(
            Entries=[
                {
                    "Source": EVENT_SOURCE,
                    "DetailType": EVENT_DETAIL_TYPE,
                    "EventBusName": self.settings.event_bus,
                    "Detail": json.dumps(
                        {
                            "job_id": job.job_id,
                            "kind": job.kind,
                            "status": status,
                            "owner_sub": job.owner_sub,
                            "counts": dict(counts),
                        }
                    ),
                }
            ]
        )

    # -- both kinds ----------------------------------------------------------------------------

    def begin(self, event: Mapping[str, Any]) -> dict[str, Any]:
        job = self._job(event)
        needs_cohort = job.kind == "cohort" or ExportRequest.from_json(job.request).selection is not None
        segments = self._segments(job) if needs_cohort else []
        self.jobs.update(job.job_id, status="RUNNING", parts_total=len(segments) if job.kind == "cohort" else 0)
        return {"job_id": job.job_id, "needs_cohort": needs_cohort, "segments": segments}

    def segment(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """One scan segment of the catalog: for each study in it, its visible instances that the
        cohort's query selects, into this segment's part (one fixed key: a retry rewrites it)."""
        job = self._job(event)
        access, _ = self._access(job)
        selection = Selection.parse(job.request)
        profiles = access.allowing("search")
        rows: list[dict[str, Any]] = []
        studies_read = instances_read = 0
        if profiles:
            for study in self._catalog_segment(int(event["segment"]), int(event["total"])):
                instances = self.index.study_instances(study)
                studies_read += 1
                instances_read += len(instances)
                rows += cohort_rows(profiles, instances, selection)
        rows.sort(key=row_order)
        self._put(segment_key(job.job_id, int(event["segment"])), _json_lines(rows), "application/x-ndjson")
        if job.kind == "cohort":
            self.jobs.part_done(job.job_id, int(event["segment"]))
        return {
            "segment": int(event["segment"]),
            "rows": len(rows),
            "studies": studies_read,
            "instances": instances_read,
        }

    def _catalog_segment(self, segment: int, total: int) -> Iterator[str]:
        kwargs: dict[str, Any] = {
            "Segment": segment,
            "TotalSegments": total,
            "FilterExpression": "#item = :study",
            "ExpressionAttributeNames": {"#item": "item"},
            "ExpressionAttributeValues": {":study": "study"},
            "ProjectionExpression": "study_instance_uid",
        }
        while True:
            page = self.catalog.scan(**kwargs)
            for item in page.get("Items", []):
                yield str(item["study_instance_uid"])
            if "LastEvaluatedKey" not in page:
                return
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def _cohort_rows(self, job_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for segment in range(max(1, self.settings.segments)):
            data = self._get(segment_key(job_id, segment))
            if data is None:
                raise GapError(f"segment {segment} of the cohort has no results: resume the job")
            rows += _read_json_lines(data)
        return sorted(rows, key=row_order)

    def cohort_finish(self, event: Mapping[str, Any]) -> dict[str, Any]:
        job = self._job(event)
        rows = self._cohort_rows(job.job_id)
        counts = summarize_rows(rows)
        self._put(cohort_manifest_key(job.job_id), _json_lines(rows), "application/x-ndjson")
        summary = {
            "job_id": job.job_id,
            "created": job.created,
            "finished": now_text(),
            "request": job.request,
            "profiles": job.profiles,
            "profiles_version": job.profiles_version,
            "counts": counts,
        }
        self._put(cohort_summary_key(job.job_id), json.dumps(summary, indent=2).encode(), "application/json")
        self.jobs.update(job.job_id, status="SUCCEEDED", counts=counts)
        self._emit(job, "SUCCEEDED", counts)
        return {"job_id": job.job_id, **counts}

    # -- exports -------------------------------------------------------------------------------

    def _destination(self, job: Job, access: Access) -> Destination:
        request = ExportRequest.from_json(job.request)
        return destination_for(access, request.destination, self.settings.export_buckets)

    def plan(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Which instances the export delivers: the selection, as the caller may export it now.
        Written once: a resumed job keeps its plan (and its chunks' results)."""
        job = self._job(event)
        existing = self._get(plan_key(job.job_id))
        if existing is not None:
            plan = json.loads(existing)
            return {
                "job_id": job.job_id,
                "bucket": self.settings.exports_bucket,
                "chunks_key": chunks_key(job.job_id),
                **plan,
            }
        request = ExportRequest.from_json(job.request)
        access, _ = self._access(job)
        destination = self._destination(job, access)
        profiles = export_profiles(access, destination.name)
        planned, withdrawn = self._planned(job, request, profiles)
        limit = export_limit(profiles)
        if len(planned) > limit:
            raise JobLimitError(
                f"the export selects {len(planned)} instances; your profiles allow at most {limit} per export"
            )
        chunks = chunked(planned, self.settings.chunk_instances)
        for i, chunk in enumerate(chunks):
            body = json.dumps([p.to_json() for p in chunk], separators=(",", ":")).encode()
            self._put(chunk_plan_key(job.job_id, i), body, "application/json")
        items = [{"step": "chunk", "job_id": job.job_id, "chunk": i} for i in range(len(chunks))]
        self._put(chunks_key(job.job_id), json.dumps(items).encode(), "application/json")
        plan = {"chunks": len(chunks), "planned": len(planned), "withdrawn": withdrawn}
        self._put(plan_key(job.job_id), json.dumps(plan).encode(), "application/json")  # last: the plan is whole
        self.jobs.update(job.job_id, parts_total=len(chunks))
        return {
            "job_id": job.job_id,
            "bucket": self.settings.exports_bucket,
            "chunks_key": chunks_key(job.job_id),
            **plan,
        }

    def _planned(self, job: Job, request: ExportRequest, profiles: Sequence[Any]) -> tuple[list[PlannedInstance], int]:
        """(instances to deliver, how many selected ones the caller may no longer export)."""
        wanted_sops: dict[str, set[str]] | None = None  # study -> SOPs, for row-based selections
        if request.cohort is not None:
            cohort = self.jobs.get(request.cohort)
            if cohort is None or cohort.owner_sub != job.owner_sub or cohort.kind != "cohort":
                raise JobRequestError("the cohort is not one of your cohort jobs")
            if cohort.status != "SUCCEEDED":
                raise JobRequestError("the cohort job has not finished")
            data = self._get(cohort_manifest_key(cohort.job_id)) or b""
            rows = _read_json_lines(data)
        elif request.selection is not None:
            rows = self._cohort_rows(job.job_id)
        else:
            rows = []
        if request.uids:
            studies = sorted({u.study for u in request.uids})
        else:
            wanted_sops = {}
            for row in rows:
                wanted_sops.setdefault(str(row["study"]), set()).add(str(row["sop"]))
            studies = sorted(wanted_sops)
        planned: list[PlannedInstance] = []
        withdrawn = 0
        for study in studies:
            instances = self.index.study_instances(study)
            if wanted_sops is not None:
                selected = wanted_sops[study]
                found = {i.sop_instance_uid for i in instances}
                withdrawn += len(selected - found)  # gone from the index since the cohort ran
            else:
                selected = {i.sop_instance_uid for i in instances if any(u.covers(i) for u in request.uids)}
            visible = {i.sop_instance_uid for i in visible_in_study(profiles, instances)} if profiles else set()
            for record in instances:
                if record.sop_instance_uid not in selected:
                    continue
                if record.sop_instance_uid in visible:
                    planned.append(PlannedInstance.of(record))
                else:
                    withdrawn += 1
        planned.sort(key=lambda p: (p.study, p.series, p.sop))
        return planned, withdrawn

    def chunk(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """Deliver one chunk: visibility decided again per instance, then each format. The chunk's
        results are written last; a chunk that has them is done (a retry or resume skips it)."""
        job = self._job(event)
        index = int(event["chunk"])
        done = self._get(chunk_results_key(job.job_id, index))
        if done is not None:
            return {"chunk": index, "resumed": True, **_result_counts(_read_json_lines(done))}
        request = ExportRequest.from_json(job.request)
        access, profiles_file = self._access(job)
        destination = self._destination(job, access)
        profiles = export_profiles(access, destination.name)
        items = [
            PlannedInstance.from_json(i) for i in json.loads(self._get(chunk_plan_key(job.job_id, index)) or b"[]")
        ]
        results: list[dict[str, Any]] = [{"profiles_version": profiles_file.version}]
        visible: dict[str, InstanceRecord] = {}
        for study in sorted({i.study for i in items}):
            records = self.index.study_instances(study)
            visible.update({r.sop_instance_uid: r for r in visible_in_study(profiles, records)} if profiles else {})
        for item in items:
            record = visible.get(item.sop)
            if record is None or record.research_key != item.research_key:
                results.append({"withdrawn": item.sop})
                continue
            for fmt in request.formats:
                try:
                    for delivered in self._deliver(job, destination, request, record, item, fmt):
                        results.append({"file": delivered.to_json()})
                except RenderError as exc:
                    results.append({"error": {"sop": item.sop, "format": fmt, "reason": str(exc)}})
        self._put(chunk_results_key(job.job_id, index), _json_lines(results), "application/x-ndjson")
        self.jobs.part_done(job.job_id, index)
        return {"chunk": index, "resumed": False, **_result_counts(results)}

    def _deliver(
        self,
        job: Job,
        destination: Destination,
        request: ExportRequest,
        record: InstanceRecord,
        item: PlannedInstance,
        fmt: str,
    ) -> list[DeliveredFile]:
        bucket = destination.bucket or self.settings.exports_bucket
        root = destination.root(job.job_id)

        def put(path: str, body: bytes, content_type: str) -> DeliveredFile:
            self.s3.put_object(Bucket=bucket, Key=root + path, Body=body, ContentType=content_type)
            return DeliveredFile(
                path, len(body), hashlib.sha256(body).hexdigest(), fmt, item.study, item.series, item.sop
            )

        if fmt == "json":
            return [put(delivered_path(item, fmt), header_json(record), "application/dicom+json")]
        if fmt == "dicom" and (request.transfer_syntax in (None, record.transfer_syntax_uid)):
            return [self._copy(bucket, root, record, item)]
        data = bytes(self.s3.get_object(Bucket=self.settings.research_bucket, Key=record.research_key)["Body"].read())
        if fmt == "dicom":
            return [put(delivered_path(item, fmt), transcoded(data, str(request.transfer_syntax)), "application/dicom")]
        media = "image/png" if fmt == "png" else "image/jpeg"
        return [
            put(delivered_path(item, fmt, frame), render(data, frame, media, None), media)
            for frame in range(1, max(1, record.number_of_frames) + 1)
        ]

    def _copy(self, bucket: str, root: str, record: InstanceRecord, item: PlannedInstance) -> DeliveredFile:
        """A server-side copy (the bytes never enter the Lambda); S3 computes the SHA-256."""
        path = delivered_path(item, "dicom")
        answer = self.s3.copy_object(
            Bucket=bucket,
            Key=root + path,
            CopySource={"Bucket": self.settings.research_bucket, "Key": record.research_key},
            ChecksumAlgorithm="SHA256",
            MetadataDirective="REPLACE",
            ContentType="application/dicom",
        )
        checksum = (answer.get("CopyObjectResult") or {}).get("ChecksumSHA256")
        if not checksum:
            raise RuntimeError("S3 returned no SHA-256 for the copy")
        # The size from the source: the export role may write a team bucket, not read it.
        size = self.s3.head_object(Bucket=self.settings.research_bucket, Key=record.research_key)["ContentLength"]
        return DeliveredFile(
            path,
            int(size),
            binascii.hexlify(base64.b64decode(checksum)).decode(),
            "dicom",
            item.study,
            item.series,
            item.sop,
        )

    def export_finish(self, event: Mapping[str, Any]) -> dict[str, Any]:
        job = self._job(event)
        plan = json.loads(self._get(plan_key(job.job_id)) or b"{}")
        files: list[DeliveredFile] = []
        errors: list[dict[str, Any]] = []
        versions = {job.profiles_version}
        withdrawn = int(plan.get("withdrawn") or 0)
        for index in range(int(plan.get("chunks") or 0)):
            data = self._get(chunk_results_key(job.job_id, index))
            if data is None:
                raise GapError(f"chunk {index} of the export has no results: resume the job")
            for line in _read_json_lines(data):
                if "file" in line:
                    files.append(DeliveredFile.from_json(line["file"]))
                elif "error" in line:
                    errors.append(line["error"])
                elif "withdrawn" in line:
                    withdrawn += 1
                elif "profiles_version" in line:
                    versions.add(str(line["profiles_version"]))
        access, profiles_file = self._access(job)
        request = ExportRequest.from_json(job.request)
        destination = destination_for(access, request.destination, self.settings.export_buckets)
        profiles = export_profiles(access, destination.name)
        counts = {
            "planned": int(plan.get("planned") or 0),
            "instances": len({f.sop for f in files}),
            "files": len(files),
            "bytes": sum(f.bytes for f in files),
            "withdrawn": withdrawn,
            "errors": len(errors),
        }
        manifest = manifest_csv(files)
        record = export_record(
            job=job.to_item() | {"request": job.request},
            destination=destination,
            profiles=profiles,
            profiles_versions=sorted(versions | {profiles_file.version}),
            counts=counts,
            errors=errors,
            finished=now_text(),
        )
        bucket = destination.bucket or self.settings.exports_bucket
        root = destination.root(job.job_id)
        self._put(root + "manifest.csv", manifest, "text/csv", bucket=bucket)
        self._put(root + "export.json", json.dumps(record, indent=2).encode(), "application/json", bucket=bucket)
        if not destination.managed:
            self._put(job_manifest_key(job.job_id), manifest, "text/csv")
        self.jobs.update(job.job_id, status="SUCCEEDED", counts=counts)
        self._emit(job, "SUCCEEDED", counts)
        return {"job_id": job.job_id, **counts}

    def fail(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The Catch of our own errors (request, limit, gap): retrying or redriving cannot help."""
        job = self._job(event)
        error = event.get("error") or {}
        reason = failure_reason(str(error.get("Error", "")), str(error.get("Cause") or ""))
        if self.jobs.fail_running(job.job_id, job.execution_arn, reason):
            self._emit(job, "FAILED", {})
        return {"job_id": job.job_id, "status": "FAILED"}

    def execution_changed(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """A job's execution changed status (its "Execution Status Change" event).

        Failed, timed out or aborted without passing through its Catch (a step that failed after its
        retries is left uncaught, so that a redrive reruns it): the job is marked FAILED and
        announced, once. Running again while the job says FAILED: it was redriven (the console's
        Redrive), and the job runs again."""
        detail = event.get("detail") or {}
        status, execution_arn = str(detail.get("status", "")), str(detail.get("executionArn", ""))
        try:
            job_id = str(json.loads(str(detail.get("input") or "{}")).get("job_id") or "")
        except (ValueError, AttributeError):
            job_id = ""
        job = self.jobs.get(job_id) if is_job_id(job_id) else None
        if job is None or job.execution_arn != execution_arn:
            return {"job_id": job_id, "status": job.status if job else "unknown"}
        if status == "RUNNING" and job.status == "FAILED":
            self.jobs.restart(job.job_id, execution_arn, status="RUNNING")
            return {"job_id": job.job_id, "status": "RUNNING"}
        if status in ENDED_UNSUCCESSFULLY:
            reason = failure_reason(str(detail.get("error") or ""), str(detail.get("cause") or ""), status)
            if self.jobs.fail_running(job.job_id, execution_arn, reason):
                self._emit(job, "FAILED", {})
                return {"job_id": job.job_id, "status": "FAILED"}
        return {"job_id": job.job_id, "status": job.status}


def transcoded(data: bytes, transfer_syntax: str) -> bytes:
    """The instance decompressed into Explicit VR Little Endian (the one syntax exports offer)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
    except Exception as exc:  # noqa: BLE001 - any decoder failure: this instance cannot be transcoded
        raise RenderError(406, f"this instance cannot be transcoded ({type(exc).__name__})") from None
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _result_counts(results: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    return {
        "files": sum(1 for r in results if "file" in r),
        "withdrawn": sum(1 for r in results if "withdrawn" in r),
        "errors": sum(1 for r in results if "error" in r),
    }


def _counts(result: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if isinstance(v, int | bool) and k != "segments"}


# -- what the API asks of jobs ---------------------------------------------------------------------


MANIFEST_PAGE = 1000


@dataclass
class JobsApi:
    """The research API's side of jobs: start, list and follow one's own, read a manifest, fetch a
    delivered file. Another user's job is 404, like a UID one may not see."""

    store: JobStore
    sfn: Any
    s3: Any
    exports_bucket: str
    export_buckets: tuple[str, ...]
    cohort_state_machine: str
    export_state_machine: str

    def create(self, kind: str, access: Access, body: Mapping[str, Any]) -> Job:
        from ..research.service import ApiError

        if not isinstance(body, Mapping):
            raise ApiError(400, "the body is a JSON object")
        name = str(body.get("name") or "")
        try:
            if kind == "cohort":
                if not access.allowing("search"):
                    raise JobRequestError("none of your profiles allows search")
                selection = Selection.parse(body)
                request = selection.to_json()
            else:
                export = ExportRequest.parse(body)
                # Checked now for a clear answer, and again by every step.
                destination_for(access, export.destination, self.export_buckets)
                if export.cohort is not None:
                    self.get(access, export.cohort, kind="cohort")
                request = export.to_json()
        except JobRequestError as exc:
            raise ApiError(400, str(exc)) from None
        job = Job.new(kind, access.caller, access, request, name)
        self.store.put(job)
        self._start(job)
        return job

    def _start(self, job: Job) -> None:
        arn = self.cohort_state_machine if job.kind == "cohort" else self.export_state_machine
        # A fresh execution name per start: a resumed job is a new execution of the same job.
        started = self.sfn.start_execution(
            stateMachineArn=arn,
            name=f"{job.job_id}-{now_text().replace(':', '').replace('.', '')[:17]}",
            input=json.dumps({"job_id": job.job_id}),
        )
        self.store.restart(job.job_id, str(started["executionArn"]))

    def get(self, access: Access, job_id: str, kind: str | None = None) -> Job:
        from ..research.service import ApiError

        job = self.store.get(job_id) if job_id.startswith("job-") else None
        if job is None or job.owner_sub != access.caller.sub or (kind is not None and job.kind != kind):
            raise ApiError(404, f"no such {kind or 'job'} of yours")
        return self._as_executed(job)

    def owned(self, access: Access) -> list[Job]:
        return [self._as_executed(job) for job in self.store.owned(access.caller.sub)]

    def _execution(self, job: Job) -> dict[str, Any] | None:
        if not job.execution_arn:
            return None
        try:
            return dict(self.sfn.describe_execution(executionArn=job.execution_arn))
        except Exception:  # noqa: BLE001 - gone (90 days) or unreachable: the record stands
            return None

    def _as_executed(self, job: Job) -> Job:
        """The job as its execution stands, where the record lags behind it: an execution that ended
        without its Catch (the status-change event writes that down, moments later, in the cloud;
        nothing does on a laptop), or one redriven from the console."""
        if job.status == "SUCCEEDED":
            return job
        execution = self._execution(job) or {}
        status = str(execution.get("status", ""))
        if job.status in ("QUEUED", "RUNNING") and status in ENDED_UNSUCCESSFULLY:
            reason = failure_reason(str(execution.get("error") or ""), str(execution.get("cause") or ""), status)
            return replace(job, status="FAILED", error=reason)
        if job.status == "FAILED" and status == "RUNNING":
            return replace(job, status="RUNNING", error=None)
        return job

    def resume(self, access: Access, job_id: str) -> Job:
        """A failed job continues where it stopped: its execution is redriven (only what failed
        runs again) where Step Functions can, else a new execution of the job starts (the steps
        skip what is done: the plan, the segments, the chunks with results)."""
        from ..research.service import ApiError

        job = self.get(access, job_id)
        if job.status != "FAILED":
            raise ApiError(409, f"the job is {job.status}: only a failed job is resumed")
        execution = self._execution(job) or {}
        # A job failed by its Catch ended in the Fail state: a redrive would only rerun that.
        if execution.get("redriveStatus") == "REDRIVABLE" and execution.get("error") != JOB_FAILED_ERROR:
            self.sfn.redrive_execution(executionArn=job.execution_arn)
            self.store.restart(job.job_id, job.execution_arn, status="RUNNING")
        else:
            self._start(job)
        return self.get(access, job_id)

    def manifest(self, access: Access, job_id: str, offset: int, limit: int) -> dict[str, Any]:
        from ..research.jobs import read_manifest_csv
        from ..research.service import ApiError

        job = self.get(access, job_id)
        if job.status != "SUCCEEDED":
            raise ApiError(409, f"the job is {job.status}: its manifest is written when it succeeds")
        limit = max(1, min(limit, MANIFEST_PAGE))
        if job.kind == "cohort":
            rows = _read_json_lines(self._read(cohort_manifest_key(job_id)))
            return {"total": len(rows), "offset": offset, "instances": rows[offset : offset + limit]}
        files = read_manifest_csv(self._read(job_manifest_key(job_id)))
        return {
            "total": len(files),
            "offset": offset,
            "destination": job.request.get("destination"),
            "files": [f.to_json() for f in files[offset : offset + limit]],
        }

    def file_url(self, access: Access, job_id: str, path: str, seconds: int) -> tuple[str, DeliveredFile]:
        """A just-signed link to one delivered file of a managed export (the manifest must list it)."""
        from ..research.jobs import read_manifest_csv
        from ..research.service import ApiError

        job = self.get(access, job_id, kind="export")
        if job.request.get("destination") != "managed" or job.status != "SUCCEEDED":
            raise ApiError(404, "only a finished export to the managed bucket is downloaded here")
        wanted = path if path in ("manifest.csv", "export.json") else None
        listed = next((f for f in read_manifest_csv(self._read(job_manifest_key(job_id))) if f.path == path), None)
        if listed is None and wanted is None:
            raise ApiError(404, "the export has no such file")
        url = self.s3.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.exports_bucket,
                "Key": f"exports/{job_id}/{path}",
                # Saved as a file, not shown: the link is on another origin, where `download` is ignored.
                "ResponseContentDisposition": f'attachment; filename="{path.rsplit("/", 1)[-1]}"',
            },
            ExpiresIn=seconds,
        )
        found = listed or DeliveredFile(path, 0, "", "export", "", "", "")
        return str(url), found

    def _read(self, key: str) -> bytes:
        from ..research.service import ApiError

        try:
            return bytes(self.s3.get_object(Bucket=self.exports_bucket, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            raise ApiError(
                410, "the job's files have expired (exports are kept for a limited time): run it again"
            ) from None


_steps: JobSteps | None = None


def handler(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """The Lambda handler of the jobs function (functions/research_jobs/app.py)."""
    global _steps
    if _steps is None:
        _steps = JobSteps(JobsSettings.from_env())
    try:
        return _steps.handle(event)
    except Exception as exc:
        # The type only: a botocore message can quote keys.
        logger.error("research_job_step_failed", extra={"step": event.get("step"), "error": type(exc).__name__})
        raise


def reset_steps() -> None:
    global _steps
    _steps = None


__all__ = [
    "GapError",
    "JobLimitError",
    "JobRequestError",
    "JobSteps",
    "JobStore",
    "JobsApi",
    "JobsSettings",
    "handler",
    "reset_steps",
]
