"""The backfill on this machine: `statemachines/backfill.asl.json` on moto, over a LocalWorkflow's stack.

The archive is put into the local ingest bucket under a prefix the bucket does not notify
(`archive/` by default), as an archive copied or replicated into the ingest bucket would sit
there; the backfill state machine then runs exactly as deployed (plan, the Distributed Map of
batches, each through the deidentify state machine, finish), its Lambda tasks answered
in-process by the LocalWorkflow. What moto does differently (docs/workflow.md, Backfill): its
Distributed Map Run succeeds when a child execution fails, which `finish` catches (an object
without a status fails the run), and it has no RedriveExecution, so a resume is a rerun of the
same run id, which skips what the status table says is done.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from ..cloud.backfill import INVENTORY_PREFIX, WORK_PREFIX, progress
from .workflow import ExecutionReport, LocalWorkflow

ARCHIVE_PREFIX = "archive/"


@dataclass
class BackfillRun:
    run: str
    execution_arn: str
    status: str  # the backfill execution's: SUCCEEDED, FAILED
    error: str | None
    counts: dict[str, int]  # cloud.backfill.progress, after the ingest queue was drained
    seconds: float
    redrives: list[ExecutionReport] = field(default_factory=list)  # parked objects, back through the Pipe
    skipped_as_done: int = 0  # planned objects this execution found done (status table) and did not submit
    submitted: int = 0  # objects it sent through the deidentify state machine (or the long lane)

    @property
    def objects_per_second(self) -> float:
        return self.counts.get("objects", 0) / self.seconds if self.seconds else 0.0


class LocalBackfill:
    """Runs backfills on a LocalWorkflow's stack (which must be entered)."""

    def __init__(self, workflow: LocalWorkflow):
        self.workflow = workflow
        self.state_machine_arn = workflow.stack.output("BackfillStateMachineArn")
        _nested_executions_as_aws()
        # A plain client (a resource's own client converts attribute values again).
        self._dynamodb = boto3.client("dynamodb")
        # What each prepared batch skipped (done before), per run: the rerun's skip count, which
        # the status table cannot tell (it holds outcomes, not which run found them).
        self.skipped_as_done: Counter[str] = Counter()
        self.submitted: Counter[str] = Counter()
        handle = workflow.handlers["Backfill"]

        def observed(event: Any, context: Any) -> Any:
            answer = handle(event, context)
            if isinstance(event, dict) and event.get("step") == "prepare":
                run = str(event.get("run"))
                self.skipped_as_done[run] += int(answer["backfill"]["done_before"])
                self.submitted[run] += len(answer["objects"]) + len(answer["long_lane"])
            return answer

        workflow.handlers["Backfill"] = observed

    def put_archive(self, folder: Path, prefix: str = ARCHIVE_PREFIX) -> list[str]:
        """Every file under `folder` into the ingest bucket under `prefix` (no notification there)."""
        names = self.workflow.names
        if prefix.startswith((names.ingest_prefix, names.orthanc_prefix, WORK_PREFIX, INVENTORY_PREFIX)):
            raise ValueError("the archive prefix must not be a notified prefix or the backfill's own")
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = prefix + path.relative_to(folder).as_posix()
            self.workflow.s3.put_object(Bucket=self.workflow.names.ingest_bucket, Key=key, Body=path.read_bytes())
            keys.append(key)
        return keys

    def start(
        self, *, prefix: str | None = None, manifest_key: str | None = None, run: str | None = None
    ) -> tuple[str, str]:
        """(run id, execution ARN) of a new backfill execution over a prefix or an inventory manifest."""
        run = run or f"backfill-{uuid.uuid4().hex[:12]}"
        source: dict[str, Any] = {"bucket": self.workflow.names.ingest_bucket}
        if manifest_key is not None:
            source["manifest"] = {"bucket": self.workflow.names.ingest_bucket, "key": manifest_key}
        else:
            source["prefix"] = ARCHIVE_PREFIX if prefix is None else prefix
        arn = self.workflow.sfn.start_execution(
            stateMachineArn=self.state_machine_arn,
            name=f"{run}-{uuid.uuid4().hex[:8]}",  # a rerun of the run is a new execution
            input=json.dumps({"run": run, "source": source}),
        )["executionArn"]
        return run, str(arn)

    def progress(self, run: str) -> dict[str, int]:
        """The run's objects by outcome, as `deidflow backfill` prints them while it runs."""
        names = self.workflow.names
        with self.workflow.exclusive():
            return progress(self.workflow.s3, self._dynamodb, names.status_table, names.ingest_bucket, run)

    def run(
        self,
        *,
        prefix: str | None = None,
        manifest_key: str | None = None,
        run: str | None = None,
        on_progress: Callable[[dict[str, int]], None] | None = None,
        interval: float = 2.0,
        timeout: float = 3600.0,
    ) -> BackfillRun:
        """One backfill execution to its end, then the ingest queue drained (what it parked comes
        back through the Pipe, as in the cloud), then the final counts."""
        started = time.perf_counter()
        skipped_before, submitted_before = self.skipped_as_done[run or ""], self.submitted[run or ""]
        run, arn = self.start(prefix=prefix, manifest_key=manifest_key, run=run)
        deadline = time.monotonic() + timeout
        last = 0.0
        while True:
            execution = self.workflow.sfn.describe_execution(executionArn=arn)
            if execution["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill still running after {timeout:.0f} s")
            if on_progress is not None and time.monotonic() - last >= interval:
                last = time.monotonic()
                on_progress(self.progress(run))
            time.sleep(0.2)
        redrives = self.workflow.run_pipe()
        counts = self.progress(run)
        seconds = time.perf_counter() - started
        return BackfillRun(
            run=run,
            execution_arn=arn,
            status=str(execution["status"]),
            error=execution.get("error"),
            counts=counts,
            seconds=seconds,
            redrives=redrives,
            skipped_as_done=self.skipped_as_done[run] - skipped_before,
            submitted=self.submitted[run] - submitted_before,
        )


def put_inventory(workflow: LocalWorkflow, keys: list[str], *, files: int = 2, prefix: str = INVENTORY_PREFIX) -> str:
    """An S3 Inventory of `keys` as S3 delivers one (manifest.json, gzipped CSV data files, keys
    URL-encoded, the latest version of each) into the ingest bucket; the manifest's key."""
    import csv
    import gzip
    import io
    from urllib.parse import quote

    s3, bucket = workflow.s3, workflow.names.ingest_bucket
    rows = []
    for key in keys:
        head = s3.head_object(Bucket=bucket, Key=key)
        rows.append([bucket, quote(key), head.get("VersionId", ""), "true", "false", str(head["ContentLength"])])
    base = f"{prefix}{bucket}/all/"
    data_keys = []
    for i in range(files):
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows[i::files])
        data_key = f"{base}data/{uuid.uuid4()}.csv.gz"
        s3.put_object(Bucket=bucket, Key=data_key, Body=gzip.compress(text.getvalue().encode()))
        data_keys.append(data_key)
    manifest = {
        "sourceBucket": bucket,
        "destinationBucket": f"arn:aws:s3:::{bucket}",
        "version": "2016-11-30",
        "fileFormat": "CSV",
        "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size",
        "files": [{"key": k, "size": 0, "MD5checksum": ""} for k in data_keys],
    }
    manifest_key = f"{base}2026-12-03T00-00Z/manifest.json"
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    return manifest_key


def _nested_executions_as_aws() -> None:
    """moto's interpreter calls StartExecution for a `states:startExecution.sync:2` task with the
    task's own parameter names (StateMachineArn, Input) through boto3's default session, and then
    reads the answer's ExecutionArn: boto3 speaks stateMachineArn and executionArn. These hooks
    translate both ways (and name the execution, which AWS does when a task gives no Name and moto
    does not: every child would be `…:None`). A no-op for callers that already speak boto3."""
    import boto3

    def parameters_as_boto3(params: dict[str, Any], **_: Any) -> None:
        for name in [n for n in params if n[:1].isupper()]:
            params[name[:1].lower() + name[1:]] = params.pop(name)
        params.setdefault("name", uuid.uuid4().hex)

    def answer_as_task(parsed: dict[str, Any], **_: Any) -> None:
        for name in [n for n in parsed if n[:1].islower()]:
            parsed.setdefault(name[:1].upper() + name[1:], parsed[name])

    events = boto3.DEFAULT_SESSION.events if boto3.DEFAULT_SESSION else boto3.Session().events
    events.register("before-parameter-build.sfn.StartExecution", parameters_as_boto3, unique_id="deidflow-sfn-in")
    events.register("after-call.sfn.StartExecution", answer_as_task, unique_id="deidflow-sfn-out")
