#!/usr/bin/env python
"""Cohort and export jobs on their real state machines: throughput, exact request counts, cloud cost.

    python benchmarks/bench_research_jobs.py [--instances 100000] [--export 10000] [--per-study 100]
    python benchmarks/bench_research_jobs.py --quick          # 5,000 indexed, 1,000 exported

Builds an index directly (no de-identification): one real synthetic CT instance
(deidflow.testing.synthetic) is indexed with `index_file`, and its index item and catalog items
(`catalog_items`, the Index step's shape) are cloned with new UIDs and varied Modality (CT 60 %, MR
30 %, CR 10 %), StudyDate and descriptions: `--instances` items in studies of `--per-study`, batch
written into DynamoDB on the moto server of `LocalResearchApi`. Then, in this one run:

  cohort   POST /research/cohorts {"query": "Modality StrEquals CT"} over the whole index: the real
           cohort state machine (moto's interpreter, Distributed Map) and the real steps
  export   POST /research/exports of the first `--export` instances (study UIDs; format dicom,
           destination managed): research objects are 2 KB synthetic files put in the research
           bucket under the items' research_key, copied server-side by the chunk steps
  peer     a plain boto3 loop doing the same copy_object calls sequentially on the same moto

Counts are exact (botocore hooks on the jobs' own clients; the state machines' histories); read
units are computed as DynamoDB bills them from the sizes of the items actually stored and returned
(moto's own ConsumedCapacity is a constant, so it is not used). Times are of moto on this machine
(loopback, one Lambda call at a time as LocalJobRunner runs them), not of AWS. Exits 0: a
benchmark, not a test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import requests
from boto3.dynamodb.types import TypeDeserializer

sys.path.insert(0, str(Path(__file__).parent))

from bench_research_api import PRICE as API_PRICE
from bench_research_api import _rru_item, _rru_stream
from bench_workflow import PRICE as WORKFLOW_PRICE
from deidflow.cloud import research_jobs
from deidflow.cloud.steps import catalog_items
from deidflow.index import index_file, item_size
from deidflow.local.api import LocalResearchApi
from deidflow.local.template import load_template
from deidflow.testing.synthetic import make_patient, make_series, make_study

REPO = Path(__file__).resolve().parents[1]
MILLION = 1_000_000
OBJECT_BYTES = 2048  # each research object of the export: synthetic bytes, copied server-side
# Prices are the other benchmarks' (us-east-1 list prices; change them there): Step Functions
# Standard transitions, Lambda requests and arm64 GB-s, S3 requests (bench_workflow); DynamoDB
# on-demand reads and writes (bench_research_api). EventBridge custom events have no constant
# elsewhere: $1.00 per million.
EVENTBRIDGE_PER_EVENT = 1.00 / MILLION
MODALITIES = ("CT",) * 6 + ("MR",) * 3 + ("CR",)
QUERY = "Modality StrEquals CT"
MAP_STEPS = ("segment", "chunk")  # the steps the Distributed Maps run, one per child execution
PROFILES = """\
version: 1
profiles:
  everything:
    description: every instance, for the benchmark
    scope: {{labels: [ALL]}}
    level: study
    actions: [search, view, download, export]
    export:
      max_instances: {limit}
      destinations: [{{name: managed}}]
assignments:
  - users: [bench]
    profiles: [everything]
"""
_DESERIALIZE = TypeDeserializer()
_TYPES = {"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"}


# -- the index ------------------------------------------------------------------------------------


def template_items(folder: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One real synthetic instance, indexed as the Index step indexes it: its index item and catalog items."""
    rng = np.random.default_rng(2026)
    study = make_study(make_patient(0), 0, rng)
    instance = next(iter(make_series(study, rng, 1, rows=16, columns=16)))
    path = folder / "template.dcm"
    instance.dataset.save_as(path, enforce_file_format=True)
    entry = index_file(path, "studies/s/series/r/instances/i.dcm")
    assert entry.sidecar is None, "the template header fits in its item"
    return dict(entry.item), catalog_items(entry)


def _uid(n: int, kind: int) -> str:
    return f"1.2.826.0.1.3680043.10.1379.9.{kind}.{n}"


def _swap(value: Any, replacements: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
    return value


def clone_index(
    item: dict[str, Any], catalog: list[dict[str, Any]], instances: int, per_study: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`instances` index items in studies of `per_study` (one series each), and their catalog items."""
    study0, series0, sop0 = item["study_instance_uid"], item["series_instance_uid"], item["sop_instance_uid"]
    date0, modality0, number0 = item["study_date"], item["modality"], item["instance_number"]
    study_item = next(c for c in catalog if c["item"] == "study")
    items, catalog_out = [], []
    for s in range(math.ceil(instances / per_study)):
        study, series = _uid(s, 1), _uid(s, 2)
        modality = MODALITIES[s % len(MODALITIES)]
        date = f"{2015 + s % 10}{1 + s % 12:02d}{1 + s % 28:02d}"
        study_swaps = [
            (study0, study),
            (series0, series),
            (date0, date),
            (f'"Value":["{modality0}"]', f'"Value":["{modality}"]'),
            (f"{modality0} CHEST", f"{modality} CHEST"),
        ]
        catalog_out.append({k: _swap(v, study_swaps) for k, v in study_item.items()} | {"study_date": date})
        catalog_out.append({"study_instance_uid": study, "item": f"series#{series}", "series_instance_uid": series})
        for n in range(min(per_study, instances - s * per_study)):
            sop = _uid(s * per_study + n, 3)
            swaps = [(sop0, sop), *study_swaps]
            clone = {k: _swap(v, swaps) for k, v in item.items()}
            clone["dicom_json"] = clone["dicom_json"].replace(
                f'"00200013":{{"Value":[{number0}]', f'"00200013":{{"Value":[{n + 1}]'
            )
            clone.update(
                modality=modality,
                study_date=date,
                instance_number=n + 1,
                instance_sort=f"{n + 1:010d}#{sop}",
                series_instance_sort=f"{series}#{n + 1:010d}#{sop}",
                research_key=f"studies/{study}/series/{series}/instances/{sop}.dcm",
                object_bytes=OBJECT_BYTES,
            )
            items.append(clone)
    return items, catalog_out


def gsi_attributes(template: dict[str, Any], index_name: str) -> set[str]:
    """What a GSI of the index table holds per item: the table's and the index's keys, and its projection."""
    table = template["Resources"]["IndexTable"]["Properties"]
    gsi = next(g for g in table["GlobalSecondaryIndexes"] if g["IndexName"] == index_name)
    keys = {k["AttributeName"] for k in table["KeySchema"]} | {k["AttributeName"] for k in gsi["KeySchema"]}
    return keys | set(gsi["Projection"].get("NonKeyAttributes") or ())


# -- what the jobs' clients do ---------------------------------------------------------------------


def _plain(item: dict[str, Any]) -> dict[str, Any]:
    """An item as boto3's resource hands it over, whichever side of its transformation the hook sits."""
    if item and all(isinstance(v, dict) and len(v) == 1 and next(iter(v)) in _TYPES for v in item.values()):
        return {k: _DESERIALIZE.deserialize(v) for k, v in item.items()}
    return item


class Meter:
    """Counts every call the jobs' steps make (one botocore session, hooks on it) and what
    DynamoDB would bill for the reads, from the sizes of the items stored and returned."""

    def __init__(self, session: Any, catalog_bytes: dict[str, int], gsi_bytes: dict[str, int]):
        self.catalog_bytes = catalog_bytes  # study UID -> bytes of its study and series items (one partition)
        self.gsi_bytes = gsi_bytes  # SOP UID -> bytes of its by_study index entry
        self.lock = threading.Lock()
        self.reset()
        session.events.register("after-call", self._after)

    def reset(self) -> None:
        self.calls: Counter[str] = Counter()  # "service.Operation" -> calls
        self.rru: Counter[str] = Counter()  # "Scan catalog", "Query by_study", "BatchGetItem index", ...
        self.wru = 0.0
        self.scanned = 0
        self.job_bytes = 0

    def _after(self, model: Any, parsed: dict[str, Any], event_name: str, **_: Any) -> None:
        service = event_name.split(".")[1]
        op = model.name
        with self.lock:
            self.calls[f"{service}.{op}"] += 1
            if service != "dynamodb":
                return
            if op == "Scan":  # billed on the items scanned (before the filter and projection)
                studies = [str(_plain(i)["study_instance_uid"]) for i in parsed.get("Items", [])]
                self.scanned += int(parsed.get("ScannedCount", 0))
                self.rru["Scan catalog"] += _rru_stream(sum(self.catalog_bytes[s] for s in studies))
            elif op == "Query":  # billed on the index entries read, as the GSI stores them
                sops = [str(_plain(i)["sop_instance_uid"]) for i in parsed.get("Items", [])]
                self.rru["Query by_study"] += _rru_stream(sum(self.gsi_bytes.get(s, 0) for s in sops))
            elif op == "BatchGetItem":  # each item rounded up to 4 KB
                for items in (parsed.get("Responses") or {}).values():
                    self.rru["BatchGetItem index"] += sum(_rru_item(item_size(_plain(i))) for i in items)
            elif op == "GetItem":  # the jobs table, strongly consistent: 1 RRU per 4 KB
                item = parsed.get("Item")
                self.job_bytes = item_size(_plain(item)) if item else self.job_bytes
                self.rru["GetItem jobs (consistent)"] += 2 * _rru_item(self.job_bytes) if item else 1.0
            elif op in ("UpdateItem", "PutItem"):
                # The job item as last read (each step reads it first), per 1 KB, and its by_owner
                # GSI entry (projection ALL) as much again.
                self.wru += 2 * max(1, math.ceil(self.job_bytes / 1024))


class Steps:
    """Times every Lambda call LocalJobRunner makes into the jobs function."""

    def __init__(self, handler: Callable[[Any, Any], Any]):
        self.handler = handler
        self.durations: list[tuple[str, float]] = []

    def __call__(self, event: Any, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return self.handler(event, context)
        finally:
            self.durations.append((str(event.get("step")), time.perf_counter() - started))


def parent_transitions(sfn: Any, execution_arn: str) -> tuple[int, Counter[str]]:
    """(states entered, event types) in an execution's history.

    moto's interpreter keeps a Distributed Map's iterations out of the parent's history and lists no
    map runs; on AWS each iteration is a child Standard execution billed for its own transitions."""
    events: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
    while True:
        page = sfn.get_execution_history(**kwargs)
        events += page["events"]
        if not page.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextToken"]
    types = Counter(e["type"] for e in events)
    return sum(n for t, n in types.items() if t.endswith("StateEntered")), types


# -- the run ---------------------------------------------------------------------------------------


def wait(api: LocalResearchApi, token: str, job: str, timeout: float = 4 * 3600) -> dict[str, Any]:
    """Poll the job as the portal does. An answer other than 200 is polled again, and counted:
    moto's DynamoDB is not thread-safe, and a query racing a write (the audit sealer's, say) can
    answer 500 on a long run."""
    deadline = time.monotonic() + timeout
    errors = 0
    while time.monotonic() < deadline:
        answer = requests.get(
            f"{api.base_url}/research/jobs/{job}", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        if answer.status_code != 200:
            errors += 1
            time.sleep(2.0)
            continue
        state = answer.json()["job"]
        if state["status"] in ("SUCCEEDED", "FAILED"):
            if errors:
                print(f"  (the status poll was answered {errors} time(s) with an error, and polled again)")
            return dict(state)
        time.sleep(2.0)  # the portal's pace: every poll is an audit record too
    raise TimeoutError(job)


def start(api: LocalResearchApi, token: str, path: str, body: dict[str, Any]) -> str:
    answer = requests.post(api.base_url + path, headers={"Authorization": f"Bearer {token}"}, json=body, timeout=60)
    assert answer.status_code == 202, answer.text
    return str(answer.json()["job"]["id"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=100_000, help="index items the cohort queries")
    parser.add_argument("--export", type=int, default=10_000, help="instances exported (the first studies')")
    parser.add_argument("--per-study", type=int, default=100, help="instances per study (one series)")
    parser.add_argument("--quick", action="store_true", help="5,000 indexed, 1,000 exported")
    args = parser.parse_args(argv)
    if args.quick:
        args.instances, args.export = 5_000, 1_000
    args.export = min(args.export, args.instances)
    project = REPO
    template = load_template(project / "template.yaml")
    memory_mb = int(template["Resources"]["ResearchJobsFunction"]["Properties"]["MemorySize"])

    with tempfile.TemporaryDirectory(prefix="bench-research-jobs-") as tmp:
        root = Path(tmp)
        (root / "research").mkdir()
        (root / "profiles.yaml").write_text(PROFILES.format(limit=max(args.export, 1)), "utf-8")
        (root / "access.yaml").write_text("profiles: profiles.yaml\nusers:\n  - {username: bench}\n", "utf-8")
        started = time.perf_counter()
        item, catalog = template_items(root)
        items, catalog_out = clone_index(item, catalog, args.instances, args.per_study)
        print(
            f"{len(items):,} index items ({statistics.mean(item_size(i) for i in items[:1000]) / 1000:.1f} KB each)"
            f" in {len(items) // args.per_study + (len(items) % args.per_study > 0):,} studies"
            f" + {len(catalog_out):,} catalog items built in {time.perf_counter() - started:.1f} s"
        )
        with LocalResearchApi(root / "research", root / "access.yaml", project=project) as api:
            run(api, args, items, catalog_out, template, memory_mb)
    return 0


def run(
    api: LocalResearchApi,
    args: Any,
    items: list[dict[str, Any]],
    catalog: list[dict[str, Any]],
    template: dict[str, Any],
    memory_mb: int,
) -> None:
    n = api.names
    started = time.perf_counter()
    dynamodb = api.resource("dynamodb")
    with dynamodb.Table(n.index_table).batch_writer() as writer:
        for item in items:
            writer.put_item(Item=item)
    with dynamodb.Table(n.catalog_table).batch_writer() as writer:
        for item in catalog:
            writer.put_item(Item=item)
    loaded = time.perf_counter() - started
    s3 = api.client("s3")
    exported = items[: args.export]
    body = bytes(range(256)) * (OBJECT_BYTES // 256)
    started = time.perf_counter()
    for item in exported:
        s3.put_object(Bucket=n.research_bucket, Key=item["research_key"], Body=body, ContentType="application/dicom")
    print(
        f"loaded into moto: index + catalog in {loaded:.1f} s; {len(exported):,} research objects of"
        f" {OBJECT_BYTES} B in {time.perf_counter() - started:.1f} s\n"
    )

    catalog_bytes: dict[str, int] = defaultdict(int)
    for c in catalog:
        catalog_bytes[str(c["study_instance_uid"])] += item_size(c)
    projected = gsi_attributes(template, "by_study")
    gsi_bytes = {str(i["sop_instance_uid"]): item_size({k: v for k, v in i.items() if k in projected}) for i in items}

    # The jobs' steps with clients of one metered session (the handler keeps this instance).
    research_jobs.logger.setLevel("WARNING")  # imported before LocalResearchApi set POWERTOOLS_LOG_LEVEL
    session = boto3.session.Session()
    meter = Meter(session, catalog_bytes, gsi_bytes)
    job_steps = research_jobs.JobSteps(research_jobs.JobsSettings.from_env(), session=session)
    research_jobs._steps = job_steps  # noqa: SLF001 - the container's instance, which the handler then uses
    assert api.jobs.handler is not None
    steps = Steps(api.jobs.handler)
    api.jobs.handler = steps
    # What Step Functions itself asks of S3 (the Map's ItemReader) goes through boto3's default session.
    interpreter: Counter[str] = Counter()
    assert boto3.DEFAULT_SESSION is not None

    def item_reader(params: dict[str, Any], **_: Any) -> None:
        # Only the Map's reads of its items (the same session also carries the local audit sealer's calls).
        if str(params.get("Key", "")).endswith("/plan/chunks.json"):
            interpreter.update(["s3.GetObject"])

    boto3.DEFAULT_SESSION.events.register(
        "provide-client-params.s3.GetObject", item_reader, unique_id="bench-sfn-item-reader"
    )
    sfn = api.client("stepfunctions")
    token = api.token("bench")

    # -- cohort ----------------------------------------------------------------------------------
    meter.reset()
    interpreter.clear()
    started = time.perf_counter()
    job = start(api, token, "/research/cohorts", {"name": "bench", "query": QUERY})
    state = wait(api, token, job)
    cohort_wall = time.perf_counter() - started
    assert state["status"] == "SUCCEEDED", state
    arn = job_steps.jobs.get(job).execution_arn  # type: ignore[union-attr]
    cohort = Figures(meter, interpreter, steps, sfn, arn, cohort_wall)
    expected = sum(1 for i in items if i["modality"] == "CT")
    assert state["counts"]["instances"] == expected, (state["counts"], expected)
    segments = [s for name, s in cohort.durations if name == "segment"]
    print(f"cohort: {QUERY!r} over {len(items):,} instances -> {expected:,} rows, {state['counts']}")
    print(
        f"  wall {cohort_wall:.1f} s = {len(items) / cohort_wall:,.0f} instances/s;"
        f" {len(segments)} segments: mean {statistics.mean(segments):.2f} s, max {max(segments):.2f} s"
        f" (summed {sum(segments):.1f} s: {len(items) / sum(segments):,.0f} instances/s per Lambda)"
    )
    print("  per segment (s): " + " ".join(f"{s:.2f}" for s in segments))
    rru = sum(meter.rru.values())
    print(
        "  DynamoDB reads: "
        + ", ".join(f"{k} {v:,.1f} RRU" for k, v in meter.rru.items())
        + f" = {rru:,.1f} RRU ({rru / len(items) * 1000:.1f} per 1,000 instances);"
        f" {meter.wru:.0f} WRU (job item of {meter.job_bytes:,} B)"
    )
    cohort.print_counts()
    cohort.print_cost(memory_mb, len(items), "cohort query", "per million instances queried")

    # -- export ----------------------------------------------------------------------------------
    studies = list(dict.fromkeys(str(i["study_instance_uid"]) for i in exported))
    uids: list[dict[str, str]] = [{"study": s} for s in studies]
    if len(studies) * args.per_study > len(exported):  # a partial last study: its instances by name
        last = uids.pop()
        uids += [
            {"study": last["study"], "series": str(i["series_instance_uid"]), "sop": str(i["sop_instance_uid"])}
            for i in exported
            if i["study_instance_uid"] == last["study"]
        ]
    meter.reset()
    interpreter.clear()
    before = len(steps.durations)
    started = time.perf_counter()
    job = start(api, token, "/research/exports", {"uids": uids, "formats": ["dicom"], "destination": "managed"})
    state = wait(api, token, job)
    export_wall = time.perf_counter() - started
    assert state["status"] == "SUCCEEDED", state
    assert state["counts"]["instances"] == len(exported), state["counts"]
    arn = job_steps.jobs.get(job).execution_arn  # type: ignore[union-attr]
    export = Figures(meter, interpreter, steps, sfn, arn, export_wall, since=before)
    chunks = [s for name, s in export.durations if name == "chunk"]
    print(f"\nexport: {len(exported):,} instances (dicom, managed, server-side copies) -> {state['counts']}")
    print(
        f"  wall {export_wall:.1f} s = {len(exported) / export_wall:,.0f} instances/s;"
        f" {len(chunks)} chunks: mean {statistics.mean(chunks):.2f} s, max {max(chunks):.2f} s"
    )
    rru = sum(meter.rru.values())
    print(
        "  DynamoDB reads: "
        + ", ".join(f"{k} {v:,.1f} RRU" for k, v in meter.rru.items())
        + f" = {rru:,.1f} RRU; {meter.wru:.0f} WRU (job item of {meter.job_bytes:,} B)"
    )
    export.print_counts()
    export.print_cost(memory_mb, len(exported), "export", "per million instances exported")

    # -- the peer: a naive sequential copier ------------------------------------------------------
    peer = api.client("s3")
    started = time.perf_counter()
    for item in exported:
        peer.copy_object(
            Bucket=n.exports_bucket,
            Key="peer/" + item["research_key"],
            CopySource={"Bucket": n.research_bucket, "Key": item["research_key"]},
            ChecksumAlgorithm="SHA256",
            MetadataDirective="REPLACE",
            ContentType="application/dicom",
        )
    peer_wall = time.perf_counter() - started
    ours, theirs = len(exported) / export_wall, len(exported) / peer_wall
    print(f"\npeer: a plain boto3 loop, {len(exported):,} copy_object calls one after another on the same moto")
    print(f"  {'':34} {'wall s':>8} {'inst/s':>8}")
    print(f"  {'naive sequential copy_object':34} {peer_wall:8.1f} {theirs:8.0f}   1.00x")
    print(f"  {'export job (state machine + steps)':34} {export_wall:8.1f} {ours:8.0f}   {ours / theirs:.2f}x")
    print(
        "\nTimes are of moto on this machine (loopback; LocalJobRunner answers one Lambda call at a time,"
        " so the Maps' concurrency does not show); counts of requests, transitions and read units are exact."
    )


class Figures:
    """One job's counts: its calls (metered), its Lambda calls and their durations, its transitions."""

    def __init__(
        self,
        meter: Meter,
        interpreter: Counter[str],
        steps: Steps,
        sfn: Any,
        execution_arn: str,
        wall: float,
        since: int = 0,
    ):
        self.calls = Counter(meter.calls)
        self.rru = sum(meter.rru.values())
        self.wru = meter.wru
        self.interpreter = Counter(interpreter)
        self.durations = list(steps.durations[since:])
        self.parent, self.types = parent_transitions(sfn, execution_arn)
        # Each Map iteration's child execution enters its one Task state once per Lambda call
        # (a retry is a transition too): the Map steps' invocations, counted exactly.
        self.children = sum(1 for name, _ in self.durations if name in MAP_STEPS)
        self.transitions = self.parent + self.children
        self.wall = wall

    def s3(self) -> Counter[str]:
        kinds = {"CopyObject": "COPY", "PutObject": "PUT", "GetObject": "GET", "HeadObject": "HEAD"}
        out: Counter[str] = Counter()
        for call, count in self.calls.items():
            service, op = call.split(".")
            if service == "s3":
                out["LIST" if op.startswith("List") else kinds.get(op, op)] += count
        return out

    def print_counts(self) -> None:
        s3 = self.s3()
        by_step = Counter(name for name, _ in self.durations)
        print(
            "  S3 requests by the steps: "
            + ", ".join(f"{k} {s3.get(k, 0):,}" for k in ("COPY", "PUT", "GET", "HEAD", "LIST"))
            + (f"; by Step Functions (ItemReader): {dict(self.interpreter)}" if self.interpreter else "")
        )
        others = {k: v for k, v in self.calls.items() if not k.startswith("s3.")}
        print(f"  other calls by the steps: {dict(sorted(others.items()))}")
        print(
            f"  Lambda invocations {len(self.durations)} ({dict(by_step)}), billed"
            f" {self.billed_seconds():.1f} s; state transitions {self.transitions:,} = {self.parent} in the"
            f" execution's history + {self.children:,} in its Map's {self.children:,} child executions (one Task each)"
        )

    def billed_seconds(self) -> float:
        return sum(max(0.001, math.ceil(s * 1000) / 1000) for _, s in self.durations)

    def print_cost(self, memory_mb: int, instances: int, what: str, per: str) -> None:
        gb = memory_mb / 1024
        gb_s = self.billed_seconds() * gb
        s3 = self.s3()
        put_class = s3.get("COPY", 0) + s3.get("PUT", 0) + s3.get("LIST", 0)
        get_class = s3.get("GET", 0) + s3.get("HEAD", 0) + self.interpreter.get("s3.GetObject", 0)
        events = self.calls.get("eventbridge.PutEvents", 0)
        p, a = WORKFLOW_PRICE, API_PRICE
        parts = {
            "Step Functions": self.transitions * p["standard_per_transition"],
            "Lambda requests": len(self.durations) * p["lambda_per_request"],
            "Lambda duration": gb_s * p["lambda_arm_per_gb_second"],
            "DynamoDB reads": self.rru * a["dynamodb_rru_per_million"] / MILLION,
            "DynamoDB writes": self.wru * a["dynamodb_wru_per_million"] / MILLION,
            "S3 PUT/COPY/LIST": put_class * p["s3_put_per_request"],
            "S3 GET/HEAD": get_class * p["s3_get_per_request"],
            "EventBridge": events * EVENTBRIDGE_PER_EVENT,
        }
        total = sum(parts.values())
        scale = MILLION / instances
        print(f"  cloud cost of this {what} (us-east-1 list prices; Lambda arm64 {memory_mb} MB, local durations):")
        print(f"    Step Functions  {self.transitions:,} transitions x $0.025/1000 = ${parts['Step Functions']:.6f}")
        print(
            f"    Lambda          {len(self.durations)} requests x $0.20/M + {self.billed_seconds():.1f} s x {gb:g} GB"
            f" = {gb_s:.1f} GB-s x $0.0000133334 = ${parts['Lambda requests'] + parts['Lambda duration']:.6f}"
        )
        print(
            f"    DynamoDB        {self.rru:,.1f} RRU x $0.125/M + {self.wru:.0f} WRU x $0.625/M"
            f" = ${parts['DynamoDB reads'] + parts['DynamoDB writes']:.6f}"
        )
        print(
            f"    S3              {put_class:,} PUT-class x $0.005/1000 + {get_class:,} GET-class x $0.0004/1000"
            f" = ${parts['S3 PUT/COPY/LIST'] + parts['S3 GET/HEAD']:.6f}"
        )
        print(f"    EventBridge     {events} events x $1.00/M = ${parts['EventBridge']:.6f}")
        print(f"    total           ${total:.4f} per {what}; x {scale:,.0f} = ${total * scale:,.2f} {per}")
        shares = ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])[:3])
        print(f"    largest parts: {shares}")


if __name__ == "__main__":
    raise SystemExit(main())
