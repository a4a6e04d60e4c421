"""Cohort and export jobs through the research API, on their real state machines (moto's
interpreter, Distributed Map included) with the real steps: what each user gets, what an export
delivers, and that a retried step, a resumed job and a profile narrowed in between leave neither
duplicates nor gaps nor anything the caller may no longer export.

Data: the authorization matrix's fixture (tests/functions/test_research_api.py), de-identified by
the real workflow: study A (CT series with an Oncology pair and a Radiology localizer, an SR),
study B (MR pair, SR), study C (CT pair).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
import requests
from deidflow.local.api import LocalResearchApi

from tests.conftest import REPO
from tests.functions.test_research_api import Fixture, data  # noqa: F401 - the module's fixture

PROFILES = """\
version: 1
profiles:
  ct-export:
    description: CT series, export to the managed bucket and the lung team's bucket
    approval: IRB-CT-7
    scope: {filter: Modality StrEquals CT}
    level: series
    actions: [search, view, download, export]
    export:
      max_instances: 50
      destinations: [{name: managed}, {name: lung-team, bucket: lung-team-exports}]
  ct-small:
    description: CT, at most two instances per export
    scope: {filter: Modality StrEquals CT}
    level: instance
    actions: [search, export]
    export: {max_instances: 2}
  mr-search:
    description: MR studies, search only
    scope: {filter: Modality StrEquals MR}
    level: study
    actions: [search]
assignments:
  - users: [alice]
    profiles: [ct-export]
  - users: [bob]
    profiles: [mr-search]
  - users: [sam]
    profiles: [ct-small]
  - users: [audrey]
    profiles: [mr-search]
"""
ACCESS = """\
profiles: profiles.yaml
buckets: [lung-team-exports]
users:
  - {username: alice}
  - {username: bob}
  - {username: sam}
  - {username: audrey, groups: [auditors]}
"""


@pytest.fixture(scope="module")
def api(data: Fixture) -> Iterator[LocalResearchApi]:  # noqa: F811
    folder = data.research.parent / "jobs"
    folder.mkdir(exist_ok=True)
    (folder / "profiles.yaml").write_text(PROFILES)
    (folder / "access.yaml").write_text(ACCESS)
    # Two instances per export chunk: the fixture's five CT instances make three chunks.
    with LocalResearchApi(
        data.research, folder / "access.yaml", project=REPO, settings={"EXPORT_CHUNK_INSTANCES": "2"}
    ) as running:
        yield running


class Client:
    def __init__(self, api: LocalResearchApi, user: str):
        self.api = api
        self.headers = {"Authorization": f"Bearer {api.token(user)}"}

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.api.base_url + path, headers={**self.headers, **kwargs.pop("headers", {})}, **kwargs)

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(self.api.base_url + path, headers=self.headers, json=body)

    def start(self, path: str, body: Any) -> str:
        answer = self.post(path, body)
        assert answer.status_code == 202, answer.text
        return str(answer.json()["job"]["id"])

    def finished(self, job: str, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.get(f"/research/jobs/{job}").json()["job"]
            if state["status"] in ("SUCCEEDED", "FAILED"):
                return dict(state)
            time.sleep(0.2)
        raise TimeoutError(job)

    def files(self, job: str) -> list[dict[str, Any]]:
        return list(self.get(f"/research/jobs/{job}/manifest").json()["files"])

    def download(self, job: str, path: str) -> bytes:
        link = self.get(f"/research/jobs/{job}/file", params={"path": path}, headers={"Accept": "application/json"})
        assert link.status_code == 200, link.text
        return requests.get(link.json()["url"]).content


def ct_sops(data: Fixture) -> set[str]:  # noqa: F811
    return data.sops(data.a, "CT") | data.sops(data.c, "CT")


def test_a_cohort_lists_what_the_query_selects_among_what_the_caller_may_search(api, data):  # noqa: F811
    alice = Client(api, "alice")
    job = alice.start(
        "/research/cohorts",
        {"name": "localizers", "query": 'ImageType StrEquals "*LOCALIZER*"', "attributes": ["Modality", "ImageType"]},
    )
    state = alice.finished(job)
    assert state["status"] == "SUCCEEDED", state
    rows = alice.get(f"/research/jobs/{job}/manifest").json()["instances"]
    expected = {s for s in ct_sops(data) if data.sop[s]["localizer"]}
    # Hers through the series level (its department differs); the other CT images are queried out.
    assert len(expected) == 1 and {r["sop"] for r in rows} == expected
    assert rows[0]["attributes"]["Modality"] == "CT" and "LOCALIZER" in rows[0]["attributes"]["ImageType"]
    assert state["counts"] == {"studies": 1, "series": 1, "instances": 1}
    # QIDO keys narrow the same way; an MR query finds nothing of hers.
    mr = alice.start("/research/cohorts", {"qido": {"Modality": "MR"}})
    assert alice.finished(mr)["counts"] == {"studies": 0, "series": 0, "instances": 0}
    assert state["progress"]["done"] == state["progress"]["total"] > 0


def test_a_bad_query_is_a_400_that_says_what_is_wrong(api):
    alice = Client(api, "alice")
    for path in ("/research/cohorts", "/research/search"):
        answer = alice.post(path, {"query": "Modality StrEqual CT"})
        assert answer.status_code == 400 and "StrEqual" in answer.json()["error"]
    answer = alice.post("/research/exports", {"uids": [{"study": "1.2.3"}], "destination": "nowhere"})
    assert answer.status_code == 400 and "nowhere" in answer.json()["error"]
    answer = alice.post("/research/exports", {"uids": [{"study": "1.2.3"}], "formats": ["tiff"]})
    assert answer.status_code == 400 and "formats" in answer.json()["error"]


def test_quick_search_answers_by_study_from_visible_instances(api, data):  # noqa: F811
    answer = Client(api, "alice").post("/research/search", {"query": "Modality StrEquals CT"}).json()
    assert answer["complete"] is True
    assert {s["study"] for s in answer["studies"]} == {data.a, data.c}
    shown = {s["study"]: s["instances"] for s in answer["studies"]}
    assert shown[data.a] == len(data.sops(data.a, "CT"))
    bob = Client(api, "bob").post("/research/search", {"query": "Modality StrEquals CT"}).json()
    assert bob["studies"] == []


def test_an_export_delivers_every_file_with_its_sha256_and_says_who_and_under_what(api, data):  # noqa: F811
    alice = Client(api, "alice")
    cohort = alice.start("/research/cohorts", {"query": "Modality StrEquals CT"})
    assert alice.finished(cohort)["status"] == "SUCCEEDED"
    job = alice.start("/research/exports", {"cohort": cohort, "formats": ["dicom", "json", "png"]})
    state = alice.finished(job)
    assert state["status"] == "SUCCEEDED", state
    files = alice.files(job)
    dicoms = [f for f in files if f["format"] == "dicom"]
    assert {f["sop"] for f in dicoms} == ct_sops(data)
    assert len({f["path"] for f in files}) == len(files)  # no file twice
    for f in dicoms:
        assert f["path"] == f"studies/{f['study']}/series/{f['series']}/instances/{f['sop']}.dcm"
        body = alice.download(job, f["path"])
        assert hashlib.sha256(body).hexdigest() == f["sha256"] and len(body) == f["bytes"]
        assert pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID == f["sop"]
    pngs = [f for f in files if f["format"] == "png"]
    assert pngs and all(alice.download(job, f["path"]).startswith(b"\x89PNG") for f in pngs[:2])
    manifest = list(csv.DictReader(io.StringIO(alice.download(job, "manifest.csv").decode())))
    assert {(r["path"], r["sha256"]) for r in manifest} == {(f["path"], f["sha256"]) for f in files}
    record = json.loads(alice.download(job, "export.json"))
    assert record["requested_by"]["username"] == "alice"
    assert [(p["name"], p["approval"]) for p in record["profiles"]] == [("ct-export", "IRB-CT-7")]
    assert record["request"]["cohort"] == cohort
    assert record["counts"]["instances"] == len(ct_sops(data)) and record["counts"]["withdrawn"] == 0
    # Every download was audited, under its own action.
    api.seal_audit()
    downloads = [
        r for r in _audit_records(api) if r.get("action") == "export.download" and r.get("username") == "alice"
    ]
    assert len(downloads) >= len(dicoms) + 2


def test_another_user_sees_none_of_my_jobs(api):
    alice = Client(api, "alice")
    job = alice.start("/research/cohorts", {"query": "Modality StrEquals CT"})
    bob = Client(api, "bob")
    assert job not in {j["id"] for j in bob.get("/research/jobs").json()["jobs"]}
    for path in (f"/research/jobs/{job}", f"/research/jobs/{job}/manifest", f"/research/jobs/{job}/file?path=x"):
        assert bob.get(path).status_code == 404
    assert bob.post(f"/research/jobs/{job}/resume", {}).status_code == 404
    # Nor can a cohort of someone else's be exported.
    sam = Client(api, "sam")
    answer = sam.post("/research/exports", {"cohort": job})
    assert answer.status_code == 404


def test_a_profile_narrowed_between_cohort_and_export_is_applied_to_the_export(api, data):  # noqa: F811
    alice = Client(api, "alice")
    cohort = alice.start("/research/cohorts", {"query": "Modality StrEquals CT"})
    assert alice.finished(cohort)["counts"]["instances"] == len(ct_sops(data))
    narrowed = PROFILES.replace(
        "scope: {filter: Modality StrEquals CT}\n    level: series",
        'scope: {filter: Modality StrEquals CT, except: ImageType StrEquals "*LOCALIZER*"}\n    level: instance',
    )
    assert narrowed != PROFILES
    _put_profiles(api, narrowed)
    try:
        job = alice.start("/research/exports", {"cohort": cohort})
        state = alice.finished(job)
    finally:
        _put_profiles(api, PROFILES)
    localizers = {s for s in ct_sops(data) if data.sop[s]["localizer"]}
    assert localizers and state["status"] == "SUCCEEDED"
    assert {f["sop"] for f in alice.files(job)} == ct_sops(data) - localizers
    assert state["counts"]["withdrawn"] == len(localizers)


def _export_under(api: LocalResearchApi, alice: Client, data: Fixture, fault: Any) -> tuple[str, dict[str, Any]]:  # noqa: F811
    """Alice exports studies a and c (three chunks) while `fault` runs before every step; the job
    id and how it ended."""
    api.jobs.fault = fault
    try:
        job = alice.start("/research/exports", {"uids": [{"study": data.a}, {"study": data.c}]})
        return job, alice.finished(job, timeout=240)
    finally:
        api.jobs.fault = None


def test_a_retried_chunk_and_a_resumed_job_leave_no_duplicate_and_no_gap(api, data):  # noqa: F811
    alice = Client(api, "alice")
    failures = {"transient": 0}

    def fault(event: dict[str, Any]) -> None:
        if event.get("step") == "chunk" and event.get("chunk") == 0 and failures["transient"] == 0:
            failures["transient"] += 1
            raise ConnectionError("injected: S3 went away once")
        if event.get("step") == "chunk" and event.get("chunk") == 2:
            raise ConnectionError("injected: this chunk fails until the fault is lifted")

    job, state = _export_under(api, alice, data, fault)
    assert failures["transient"] == 1
    assert state["status"] == "FAILED" and "resume" in state["error"]
    assert state["progress"] == {"done": 2, "total": 3}  # chunks 0 (after its retry) and 1 finished
    before = [e for e in api.jobs.invocations if e.get("job_id") == job]
    answer = alice.post(f"/research/jobs/{job}/resume", {})
    assert answer.status_code == 202
    state = alice.finished(job)
    assert state["status"] == "SUCCEEDED", state
    files = alice.files(job)
    assert sorted(f["sop"] for f in files) == sorted(ct_sops(data))  # each once, none missing
    after = [e for e in api.jobs.invocations if e.get("job_id") == job][len(before) :]
    assert [e["step"] for e in after if e["step"] == "plan"] == ["plan"]  # the plan was reused, not redone
    assert sorted(e["chunk"] for e in after if e["step"] == "chunk") == [0, 1, 2]
    assert alice.post(f"/research/jobs/{job}/resume", {}).status_code == 409  # nothing left to resume


def _job_events(api: LocalResearchApi, name: str) -> tuple[Any, str]:
    """An SQS queue receiving every deidflow.research event from now on."""
    sqs, events = api.client("sqs"), api.client("events")
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name=name, EventPattern=json.dumps({"source": ["deidflow.research"]}))
    events.put_targets(Rule=name, Targets=[{"Id": "q", "Arn": arn}])
    return sqs, queue


def _received(sqs: Any, queue: str, job: str) -> list[str]:
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    return [d["status"] for d in (json.loads(m["Body"])["detail"] for m in messages) if d["job_id"] == job]


def test_a_redriven_export_reruns_only_from_its_map_and_leaves_no_duplicate_and_no_gap(api, data):  # noqa: F811
    """A chunk outlasts its retries. On AWS the Chunks Map fails there, uncaught, and a redrive
    starts again at it; moto's Map Run succeeds despite the failed child, so Finish finds the gap
    and the Catch fails the job. Redriven from the Map (LocalJobRunner.redrive: moto has no
    RedriveExecution), the export finishes with every file once, the finished chunks' files
    untouched, and nothing before the Map run again; the failure was announced once."""
    alice = Client(api, "alice")
    sqs, queue = _job_events(api, "redrive-export-events")
    table = api.resource("dynamodb").Table(api.names.jobs_table)

    def fault(event: dict[str, Any]) -> None:
        if event.get("step") == "chunk" and event.get("chunk") == 2:
            raise ConnectionError("injected: this chunk fails until the fault is lifted")

    job, state = _export_under(api, alice, data, fault)
    assert state["status"] == "FAILED" and "resume" in state["error"]
    failed_arn = str(table.get_item(Key={"job_id": job}, ConsistentRead=True)["Item"]["execution_arn"])
    # The status-change event that follows finds the job failed already: nothing more is announced.
    assert api.jobs.deliver_status_change(failed_arn)["status"] == "FAILED"
    assert _received(sqs, queue, job) == ["FAILED"]

    s3 = api.client("s3")
    root = f"exports/{job}/"

    def listed(prefix: str) -> dict[str, Any]:
        contents = s3.list_objects_v2(Bucket=api.names.exports_bucket, Prefix=prefix).get("Contents", [])
        return {o["Key"]: o["LastModified"] for o in contents}

    before = listed(root)
    assert len([k for k in listed(f"jobs/{job}/") if "/results/" in k]) == 2
    assert len(before) == 4  # chunks 0 and 1 delivered, two instances each
    first = len(api.jobs.invocations)
    redriven = api.jobs.redrive(failed_arn, from_state="Chunks")
    assert api.jobs.wait(redriven)["status"] == "SUCCEEDED"
    steps = sorted((e["step"], e.get("chunk", -1)) for e in api.jobs.invocations[first:] if e.get("job_id") == job)
    assert steps == [("chunk", 0), ("chunk", 1), ("chunk", 2), ("export_finish", -1)]  # no begin, no plan

    state = alice.finished(job)
    assert state["status"] == "SUCCEEDED" and state["error"] is None, state
    files = alice.files(job)
    assert sorted(f["sop"] for f in files) == sorted(ct_sops(data))  # each once, none missing
    after = listed(root)
    assert {k: after[k] for k in before} == before, "a finished chunk's files were written again"
    assert {k.removeprefix(root) for k in after} - {"manifest.csv", "export.json"} == {f["path"] for f in files}
    for f in files:
        assert hashlib.sha256(alice.download(job, f["path"])).hexdigest() == f["sha256"]
    assert _received(sqs, queue, job) == ["SUCCEEDED"]


def test_a_step_that_outlasts_its_retries_fails_uncaught_is_announced_once_and_a_redrive_finishes(api, data):  # noqa: F811
    """Begin fails after its retries: no Catch, so the execution fails at Begin. The API says so
    as the execution stands before anything wrote it down; the status-change event marks the job
    FAILED and announces it once; a redrive reruns Begin and the cohort finishes."""
    alice = Client(api, "alice")
    sqs, queue = _job_events(api, "redrive-cohort-events")
    table = api.resource("dynamodb").Table(api.names.jobs_table)

    def fault(event: dict[str, Any]) -> None:
        if event.get("step") == "begin":
            raise ConnectionError("injected: DynamoDB throttles until the fault is lifted")

    api.jobs.fault = fault
    try:
        job = alice.start("/research/cohorts", {"query": "Modality StrEquals CT"})
        state = alice.finished(job, timeout=240)
    finally:
        api.jobs.fault = None
    assert state["status"] == "FAILED", state
    assert (
        state["error"]
        == "a step failed after its retries (ConnectionError); resume the job to continue where it stopped"
    )
    record = table.get_item(Key={"job_id": job}, ConsistentRead=True)["Item"]
    assert record["status"] == "QUEUED" and "error" not in record  # nothing wrote it down yet
    failed_arn = str(record["execution_arn"])
    execution = api.jobs.sfn.describe_execution(executionArn=failed_arn)
    assert execution["status"] == "FAILED" and execution["error"] == "ConnectionError"  # not JobFailed

    for _ in range(2):  # an event delivered twice (EventBridge is at least once): announced once
        assert api.jobs.deliver_status_change(failed_arn)["status"] == "FAILED"
    record = table.get_item(Key={"job_id": job}, ConsistentRead=True)["Item"]
    assert record["status"] == "FAILED" and record["error"] == state["error"]
    assert _received(sqs, queue, job) == ["FAILED"]

    attempts = [e for e in api.jobs.invocations if e.get("job_id") == job]
    assert [e["step"] for e in attempts] == ["begin"] * 5  # the first call and its four retries
    redriven = api.jobs.redrive(failed_arn)  # moto shows the failed state: Begin
    assert api.jobs.wait(redriven)["status"] == "SUCCEEDED"
    state = alice.finished(job)
    assert state["status"] == "SUCCEEDED" and state["error"] is None
    assert state["counts"]["instances"] == len(ct_sops(data))
    assert _received(sqs, queue, job) == ["SUCCEEDED"]


def test_resume_redrives_an_execution_step_functions_can_redrive_else_starts_a_new_one():
    """The choice resume makes (RedriveExecution is not on moto: the client is stubbed here, for the
    calls' shape only): a redrivable execution that failed outside the Catch is redriven, same ARN;
    one that ended in the Fail state (our own error) or cannot be redriven starts anew."""
    import boto3
    from botocore.stub import ANY, Stubber
    from deidflow.cloud.research_jobs import JobsApi
    from deidflow.research.jobs import Job

    arn = "arn:aws:states:us-east-1:123456789012:execution:s-export:job-1"
    job = Job(
        job_id="job-" + "0" * 24, owner_sub="sub-a", owner="alice", kind="export", request={}, profiles=[],
        profiles_version="v", created="2026-12-02T00:00:00Z", status="FAILED", error="x", execution_arn=arn,
    )  # fmt: skip

    class Store:
        def __init__(self) -> None:
            self.restarted: list[tuple[str, str]] = []

        def get(self, job_id: str) -> Job:
            return job

        def restart(self, job_id: str, execution_arn: str, status: str = "QUEUED") -> None:
            self.restarted.append((execution_arn, status))

    class Caller:
        sub = "sub-a"

    class Access:
        caller = Caller()

    described = {"executionArn": arn, "stateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:s-export"}
    started = {"executionArn": arn + "-2", "startDate": "2026-12-02T00:00:00Z"}
    for redrivable, error, redriven in (("REDRIVABLE", "States.TaskFailed", True), ("REDRIVABLE", "JobFailed", False),
                                        ("NOT_REDRIVABLE", "States.TaskFailed", False)):  # fmt: skip
        sfn = boto3.client("stepfunctions", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(sfn)
        execution = {**described, "status": "FAILED", "startDate": "2026-12-02T00:00:00Z", "error": error}
        execution["redriveStatus"] = redrivable
        for _ in range(2):  # get (as it stands) and resume (may it be redriven?)
            stub.add_response("describe_execution", execution, {"executionArn": arn})
        if redriven:
            stub.add_response("redrive_execution", {"redriveDate": "2026-12-02T00:00:01Z"}, {"executionArn": arn})
        else:
            stub.add_response("start_execution", started, {"stateMachineArn": "sm-export", "name": ANY, "input": ANY})
        stub.add_response("describe_execution", execution, {"executionArn": arn})
        store = Store()
        jobs = JobsApi(store, sfn, None, "exports", (), "sm-cohort", "sm-export")  # type: ignore[arg-type]
        with stub:
            jobs.resume(Access(), job.job_id)  # type: ignore[arg-type]
            stub.assert_no_pending_responses()
        assert store.restarted == ([(arn, "RUNNING")] if redriven else [(arn + "-2", "QUEUED")]), (redrivable, error)


def test_an_export_above_the_profiles_limit_fails_with_the_limit(api, data):  # noqa: F811
    sam = Client(api, "sam")
    job = sam.start("/research/exports", {"uids": [{"study": data.a}, {"study": data.c}]})
    state = sam.finished(job)
    assert state["status"] == "FAILED"
    assert "at most 2" in state["error"] and state["counts"] == {}


def test_a_team_bucket_receives_the_export_and_the_api_does_not_hand_it_out(api, data):  # noqa: F811
    alice = Client(api, "alice")
    job = alice.start("/research/exports", {"uids": [{"study": data.c}], "destination": "lung-team"})
    assert alice.finished(job)["status"] == "SUCCEEDED"
    s3 = api.client("s3")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="lung-team-exports")["Contents"]}
    root = f"deidflow-exports/{job}/"
    assert {root + "manifest.csv", root + "export.json"} <= keys
    assert {k for k in keys if k.endswith(".dcm") and k.startswith(root)} == {
        root + f["path"] for f in alice.files(job)
    }
    path = alice.files(job)[0]["path"]
    assert alice.get(f"/research/jobs/{job}/file", params={"path": path}).status_code == 404


def test_transcoding_to_explicit_little_endian_is_recorded_in_the_file(api, data):  # noqa: F811
    alice = Client(api, "alice")
    job = alice.start("/research/exports", {"uids": [{"study": data.c}], "transfer_syntax": "1.2.840.10008.1.2.1"})
    assert alice.finished(job)["status"] == "SUCCEEDED"
    for f in alice.files(job):
        ds = pydicom.dcmread(io.BytesIO(alice.download(job, f["path"])))
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert ds.pixel_array.size > 0


def test_the_audit_trail_is_for_auditors_only(api):
    Client(api, "alice").get("/research/me")
    assert Client(api, "alice").get("/research/audit").status_code == 403
    trail = Client(api, "audrey").get("/research/audit")
    assert trail.status_code == 200 and trail.json()["records"]
    assert Client(api, "audrey").get("/research/me").json()["auditor"] is True


def test_no_token_reaches_a_job_record_a_payload_or_an_execution_history(api):
    alice = Client(api, "alice")
    job = alice.start("/research/cohorts", {"query": "Modality StrEquals CT"})
    alice.finished(job)
    token = alice.headers["Authorization"].split()[1]
    items = api.resource("dynamodb").Table(api.names.jobs_table).scan()["Items"]
    sfn = api.client("stepfunctions")
    histories = []
    for arn in api.jobs.arns.values():
        for execution in sfn.list_executions(stateMachineArn=arn)["executions"]:
            histories.append(sfn.get_execution_history(executionArn=execution["executionArn"])["events"])
    text = json.dumps([items, histories, api.jobs.invocations], default=str)
    assert token not in text and token.split(".")[1] not in text and "Bearer" not in text


def test_completion_is_announced_on_eventbridge(api):
    events = api.client("events")
    sqs = api.client("sqs")
    queue = sqs.create_queue(QueueName="job-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="jobs-done", EventPattern=json.dumps({"source": ["deidflow.research"]}))
    events.put_targets(Rule="jobs-done", Targets=[{"Id": "q", "Arn": arn}])
    alice = Client(api, "alice")
    job = alice.start("/research/cohorts", {"query": "Modality StrEquals CT"})
    alice.finished(job)
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    details = [json.loads(m["Body"])["detail"] for m in messages]
    assert any(d["job_id"] == job and d["status"] == "SUCCEEDED" for d in details)


def _put_profiles(api: LocalResearchApi, text: str) -> None:
    import os

    api.client("s3").put_object(Bucket=api.names.profiles_bucket, Key=os.environ["PROFILES_KEY"], Body=text.encode())


def _audit_records(api: LocalResearchApi) -> list[dict[str, Any]]:
    s3 = api.client("s3")
    records = []
    for item in s3.list_objects_v2(Bucket=api.names.audit_bucket).get("Contents", []):
        body = s3.get_object(Bucket=api.names.audit_bucket, Key=item["Key"])["Body"].read()
        records += [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    return [r.get("record", r) for r in records]
