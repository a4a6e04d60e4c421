#!/usr/bin/env python
"""The workflow's overhead and its cost per million instances, Express against Standard.

    python benchmarks/bench_workflow.py [--count 200] [--data-dir DIR] [--batch-size 10]

Uses the same synthetic CT instances as bench_deid.py (512x512, 16-bit, full header) and times, in
this one process:

  (a) floor     Engine.process on every file: the de-identification work alone
  (b) workflow  the whole local workflow (deidflow.local.workflow): S3 put -> SQS -> Pipe stand-in ->
                the real state machine on moto's interpreter -> the real handlers

and prints the ratio, the mean duration of each Lambda step, the state transitions per instance
(counted in the execution histories), and the cost per million instances for an EXPRESS and a
STANDARD workflow with the arithmetic spelled out. Lambda memory sizes are read from template.yaml.
Durations here are this machine's CPU with moto standing in for S3/DynamoDB; a Lambda with 2 GB has
a bit more than one vCPU, so treat the cost as an estimate of the right order. Exits 0: a benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_deid import KEY, prepare_data
from deidflow.engine import Engine
from deidflow.local.template import load_template
from deidflow.local.workflow import FUNCTIONS, LocalWorkflow
from deidflow.rules import load_rules

REPO = Path(__file__).resolve().parents[1]

# us-east-1 list prices (USD) used for the estimate; change them here if yours differ.
PRICE = {
    "standard_per_transition": 0.025 / 1000,
    "express_per_request": 1.00 / 1_000_000,
    "express_per_gb_second": 0.00001667,
    "express_memory_gb": 0.0625,  # billed in 64 MB chunks; our payloads are pointers, so the minimum
    "lambda_per_request": 0.20 / 1_000_000,
    "lambda_arm_per_gb_second": 0.0000133334,
    "sqs_per_request": 0.40 / 1_000_000,
    "pipes_per_request": 0.40 / 1_000_000,
    "dynamodb_per_write_unit": 0.625 / 1_000_000,
    "s3_put_per_request": 0.005 / 1000,
    "s3_get_per_request": 0.0004 / 1000,
}
MILLION = 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-data"))
    parser.add_argument("--batch-size", type=int, default=10)
    args = parser.parse_args(argv)

    _, files = prepare_data(args.data_dir, args.count)
    blobs = [(f.relative_to(f.parents[2]).as_posix(), f.read_bytes()) for f in files]

    engine = Engine(load_rules(), KEY)
    engine.process(blobs[0][1])  # warm-up
    started = time.perf_counter()
    for _, data in blobs:
        engine.process(data)
    floor = len(blobs) / (time.perf_counter() - started)

    with LocalWorkflow(KEY, project=REPO, batch_size=args.batch_size) as workflow:
        started = time.perf_counter()
        for name, data in blobs:
            workflow.drop(name, data)
        reports = workflow.run_pipe()
        elapsed = time.perf_counter() - started
        published = sum(1 for r in reports for o in r.objects if o.status == "published")
        transitions = sum(
            1 for r in reports for e in workflow.history(r.execution_arn) if e["type"].endswith("StateEntered")
        )
        durations: dict[str, list[float]] = defaultdict(list)
        for name, seconds in workflow.durations:
            durations[name].append(seconds)
        execution_seconds = _execution_seconds(workflow, reports)
    rate = len(blobs) / elapsed
    print(f"{len(blobs)} CT instances, {len(reports)} executions, {published} published")
    print(f"floor (Engine.process alone)   {floor:8.1f} files/s  1.00x")
    print(f"whole local workflow           {rate:8.1f} files/s  {rate / floor:.2f}x")

    template = load_template(REPO / "template.yaml")["Resources"]
    print("\nstep                  calls  mean ms  memory MB  GB-s per instance")
    gb_seconds = 0.0
    lambda_calls = 0
    for name in FUNCTIONS:
        calls = durations.get(name, [])
        if not calls:
            continue
        memory = int(template[f"{name}Function"]["Properties"]["MemorySize"])
        # Lambda bills each call rounded up to the millisecond.
        per_instance = sum(max(0.001, round(s + 0.0005, 3)) for s in calls) * memory / 1024 / len(blobs)
        gb_seconds += per_instance
        lambda_calls += len(calls)
        print(f"{name:<20} {len(calls):6d} {statistics.mean(calls) * 1000:8.1f} {memory:10d} {per_instance:18.5f}")

    per_instance_transitions = transitions / len(blobs)
    per_instance_calls = lambda_calls / len(blobs)
    executions_per_instance = len(reports) / len(blobs)
    lam = MILLION * (per_instance_calls * PRICE["lambda_per_request"] + gb_seconds * PRICE["lambda_arm_per_gb_second"])
    # Per instance: SQS send (by S3) + batched receive and delete; one Pipe request per batch.
    sqs = MILLION * (1 + 2 * executions_per_instance) * PRICE["sqs_per_request"]
    pipes = MILLION * executions_per_instance * PRICE["pipes_per_request"]
    # DynamoDB: index item (~4 WRU with its GSIs), mapping (2), status updates (2).
    dynamodb = MILLION * 8 * PRICE["dynamodb_per_write_unit"]
    # S3: staging put, copy to research (PUT class); gets of the original and of staging.
    s3 = MILLION * (2 * PRICE["s3_put_per_request"] + 2 * PRICE["s3_get_per_request"])
    shared = lam + sqs + pipes + dynamodb + s3
    standard = MILLION * per_instance_transitions * PRICE["standard_per_transition"]
    express = (
        MILLION
        * executions_per_instance
        * (
            PRICE["express_per_request"]
            + execution_seconds / len(reports) * PRICE["express_memory_gb"] * PRICE["express_per_gb_second"]
        )
    )
    print(
        f"\nper instance: {per_instance_transitions:.2f} state transitions, {per_instance_calls:.2f} Lambda calls, "
        f"{gb_seconds:.4f} Lambda GB-s; {executions_per_instance:.2f} executions "
        f"(mean {execution_seconds / len(reports):.2f} s)"
    )
    print("\ncost per million instances (USD, header path, no Rekognition)")
    print(
        f"  Lambda      {MILLION:,} x ({per_instance_calls:.2f} x $0.20/M"
        f" + {gb_seconds:.4f} GB-s x $0.0000133334) = {lam:9.2f}"
    )
    print(f"  SQS+Pipes   {sqs + pipes:9.2f}   DynamoDB {dynamodb:9.2f}   S3 requests {s3:9.2f}")
    print(
        f"  STANDARD    {MILLION:,} x {per_instance_transitions:.2f} transitions x $0.025/1000 = {standard:9.2f}"
        f"   total {standard + shared:9.2f}"
    )
    print(
        f"  EXPRESS     {MILLION * executions_per_instance:,.0f} executions x ($1/M + "
        f"{execution_seconds / len(reports):.2f} s x 64 MB x $0.00001667/GB-s) = {express:9.2f}"
        f"   total {express + shared:9.2f}"
    )
    print(f"  the workflow itself: STANDARD / EXPRESS = {standard / express:,.0f}x")
    return 0


def _execution_seconds(workflow: LocalWorkflow, reports: list) -> float:
    """Wall time of all executions (start to stop), from their descriptions."""
    total = 0.0
    for report in reports:
        described = workflow.sfn.describe_execution(executionArn=report.execution_arn)
        total += (described["stopDate"] - described["startDate"]).total_seconds()
    return total


if __name__ == "__main__":
    raise SystemExit(main())
