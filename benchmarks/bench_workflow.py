#!/usr/bin/env python
"""The workflow's overhead and its cost per million instances, Express against Standard.

    python benchmarks/bench_workflow.py [--count 200] [--data-dir DIR] [--batch-size 10]
    python benchmarks/bench_workflow.py --faults [--fault-rate 0.02] [--stubborn-share 0.02] [--count 300]

Uses the same synthetic CT instances as bench_deid.py (512x512, 16-bit, full header) and times, in
this one process:

  (a) floor     Engine.process on every file: the de-identification work alone
  (b) workflow  the whole local workflow (deidflow.local.workflow): S3 put -> SQS -> Pipe stand-in ->
                the real state machine on moto's interpreter -> the real handlers

and prints the ratio, the mean duration of each Lambda step, the state transitions per instance
(counted in the execution histories), and the cost per million instances for an EXPRESS and a
STANDARD workflow with the arithmetic spelled out. Lambda memory sizes are read from template.yaml.

`--faults` is the fault soak instead (deidflow.testing.faults): the same instances, with 2.5 % junk
added, through two local workflows in the same run, one fault-free and one with throttling
injected at random into S3, DynamoDB, Lambda and the detector (`--fault-rate` per call) and a
share of objects whose one state is throttled through all its retries (`--stubborn-share`:
parked, then redriven). It prints objects/s of each, state transitions and Lambda GB-s per
object, retries and Park rounds, and the cost per million instances of each path an object took
(published clean, published after retries, parked then published, quarantined). Retry waits are
not slept (moto sleeps them for real); what Step Functions would have waited is added to the
Express execution time.
Durations here are this machine's CPU with moto standing in for S3/DynamoDB; a Lambda with 2 GB has
a bit more than one vCPU, so treat the cost as an estimate of the right order. Exits 0: a benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_deid import KEY, prepare_data
from deidflow.engine import Engine
from deidflow.local.template import load_template
from deidflow.local.workflow import FUNCTIONS, LocalWorkflow
from deidflow.rules import load_rules
from deidflow.testing.billing import RequestMeter, s3_class

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
    "dynamodb_per_read_unit": 0.125 / 1_000_000,
    "secrets_per_request": 0.05 / 10_000,
    "s3_put_per_request": 0.005 / 1000,
    "s3_get_per_request": 0.0004 / 1000,
}
MILLION = 1_000_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench-data"))
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--faults", action="store_true", help="the fault soak (see above)")
    parser.add_argument("--fault-rate", type=float, default=0.02)
    parser.add_argument("--stubborn-share", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args(argv)

    _, files = prepare_data(args.data_dir, args.count)
    blobs = [(f.relative_to(f.parents[2]).as_posix(), f.read_bytes()) for f in files]
    if args.faults:
        return fault_soak(blobs, args)

    engine = Engine(load_rules(), KEY)
    engine.process(blobs[0][1])  # warm-up
    started = time.perf_counter()
    for _, data in blobs:
        engine.process(data)
    floor = len(blobs) / (time.perf_counter() - started)

    with (
        LocalWorkflow(KEY, project=REPO, batch_size=args.batch_size) as workflow,
        RequestMeter(workflow) as meter,
    ):
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

    n = len(blobs)
    print_requests(meter, n)
    per_instance_transitions = transitions / n
    per_instance_calls = lambda_calls / n
    executions_per_instance = len(reports) / n
    lines = request_costs(meter, n)
    lam = MILLION * (per_instance_calls * PRICE["lambda_per_request"] + gb_seconds * PRICE["lambda_arm_per_gb_second"])
    # One Pipe request per batch (its events are far below a 64 KB chunk).
    pipes = MILLION * executions_per_instance * PRICE["pipes_per_request"]
    shared = lam + pipes + sum(cost for _, cost in lines)
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
        f"{gb_seconds:.4f} Lambda GB-s; {executions_per_instance:.3f} executions "
        f"(mean {execution_seconds / len(reports):.2f} s)"
    )
    print("\ncost per million instances (USD, header path, no Rekognition, no storage), from the counts above")
    print(
        f"  Lambda       {MILLION:,} x ({per_instance_calls:.2f} calls x $0.20/M"
        f" + {gb_seconds:.4f} GB-s x $0.0000133334) = {lam:8.2f}"
    )
    print(f"  Pipes        {MILLION:,} x {executions_per_instance:.3f} batches x $0.40/M = {pipes:8.2f}")
    for text, cost in lines:
        print(f"  {text} = {cost:8.2f}")
    print(
        f"  STANDARD     {MILLION:,} x {per_instance_transitions:.2f} transitions x $0.025/1000 = {standard:8.2f}"
        f"   total {standard + shared:8.2f}"
    )
    print(
        f"  EXPRESS      {MILLION * executions_per_instance:,.0f} executions x ($1/M + "
        f"{execution_seconds / len(reports):.2f} s x 64 MB x $0.00001667/GB-s) = {express:8.2f}"
        f"   total {express + shared:8.2f}"
    )
    print(f"  the workflow itself: STANDARD / EXPRESS = {standard / express:,.0f}x")
    return 0


def print_requests(meter: RequestMeter, instances: int) -> None:
    """The measured requests per instance, by state, service and operation, and DynamoDB's units."""
    print("\nbilled requests per instance (measured)")
    print(f"  {'state':<20} {'service':<15} {'operation':<28} {'per instance':>12}")
    for (state, service, operation), count in sorted(meter.requests.items()):
        label = f"{operation} ({s3_class(operation)})" if service == "s3" else operation
        print(f"  {state:<20} {service:<15} {label:<28} {count / instances:12.3f}")
    print(f"  {'state':<20} {'DynamoDB table':<44} {'WRU':>6} {'RRU':>6}")
    for state, table in sorted(set(meter.write_units) | set(meter.read_units)):
        short = table.removeprefix("deidflow-local-")
        wru, rru = meter.write_units.get((state, table), 0), meter.read_units.get((state, table), 0.0)
        print(f"  {state:<20} {short:<44} {wru / instances:6.2f} {rru / instances:6.2f}")


def request_costs(meter: RequestMeter, instances: int) -> list[tuple[str, float]]:
    """Each request line's arithmetic and its cost per million instances, from measured counts."""
    per = {
        "put": meter.s3_requests("put") / instances,
        "get": meter.s3_requests("get") / instances,
        "sqs": meter.count("sqs") / instances,
        "secrets": meter.count("secretsmanager") / instances,
        "wru": sum(meter.write_units.values()) / instances,
        "rru": sum(meter.read_units.values()) / instances,
    }
    other = meter.s3_requests("other")
    if other:
        print(f"  ({other} S3 requests of no known price class: add them to testing/billing.py)")
    m = f"{MILLION:,}"
    return [
        (f"S3 PUT-class {m} x {per['put']:.3f} x $0.005/1000", MILLION * per["put"] * PRICE["s3_put_per_request"]),
        (f"S3 GET-class {m} x {per['get']:.3f} x $0.0004/1000", MILLION * per["get"] * PRICE["s3_get_per_request"]),
        (
            f"DynamoDB     {m} x ({per['wru']:.2f} WRU x $0.625/M + {per['rru']:.2f} RRU x $0.125/M)",
            MILLION * (per["wru"] * PRICE["dynamodb_per_write_unit"] + per["rru"] * PRICE["dynamodb_per_read_unit"]),
        ),
        (f"SQS          {m} x {per['sqs']:.3f} requests x $0.40/M", MILLION * per["sqs"] * PRICE["sqs_per_request"]),
        (
            f"Secrets Mgr  {m} x {per['secrets']:.3f} x $0.05/10000 (per container, not per instance)",
            MILLION * per["secrets"] * PRICE["secrets_per_request"],
        ),
    ]


PATHS = ("published clean", "published after retries", "parked then published", "quarantined")


@dataclass
class SoakRun:
    """One run of the fault soak: what each object cost, and which path it took."""

    label: str
    objects: int
    seconds: float
    executions: int
    retries: int
    retry_wait_seconds: float
    paths: dict[str, str]  # S3 key -> path (PATHS), or its final status if none of them
    transitions: dict[str, float]  # S3 key -> state transitions
    gb_seconds: dict[str, float]  # S3 key -> Lambda GB-s (ExpandBatch shared over its batch)
    lambda_calls: dict[str, float]
    rounds: dict[str, int]  # S3 key -> executions it was in (1 + its Park rounds)
    execution_seconds: float
    storage_requests: float  # measured S3 + DynamoDB request cost (USD) per published instance


def fault_soak(blobs: list[tuple[str, bytes]], args: argparse.Namespace) -> int:
    """The same objects through a fault-free and a faulted local workflow; costs per path."""
    from deidflow.testing.faults import FaultPlan

    junk = [(f"junk/{n:04d}.dcm", b"not an image" if n % 2 else blobs[n][1][:2000]) for n in range(len(blobs) // 40)]
    objects = blobs + junk
    memory = {
        name: int(load_template(REPO / "template.yaml")["Resources"][f"{name}Function"]["Properties"]["MemorySize"])
        for name in FUNCTIONS
    }
    runs = [
        _soak_run("without faults", objects, args, FaultPlan(), memory),
        _soak_run(
            f"with faults (rate {args.fault_rate}, stubborn {args.stubborn_share})",
            objects,
            args,
            FaultPlan(rate=args.fault_rate, seed=args.seed, stubborn_share=args.stubborn_share),
            memory,
        ),
    ]
    print(f"\n{len(blobs)} CT instances + {len(junk)} junk objects, batch size {args.batch_size}")
    print("run                                          objects/s  transitions/obj  GB-s/obj  retries  parks")
    for run in runs:
        n = run.objects
        print(
            f"{run.label:<44} {n / run.seconds:9.1f} {sum(run.transitions.values()) / n:16.2f}"
            f" {sum(run.gb_seconds.values()) / n:9.4f} {run.retries:8d} {sum(run.rounds.values()) - n:6d}"
        )
    faulted = runs[1]
    print(
        f"\nretries: {faulted.retries} waits Step Functions would have slept, {faulted.retry_wait_seconds:.0f} s in all"
        f" (not slept here; added to the Express execution time below)"
    )
    print("\ncost per million instances of each path (USD; the faulted run's objects, EXPRESS and STANDARD)")
    print("  per object: Lambda = calls x $0.20/M + GB-s x $0.0000133334; SQS+Pipes = rounds x (1 + 2/batch) x $0.40/M")
    print("  + rounds/batch x $0.40/M; STANDARD = transitions x $0.025/1000; EXPRESS = rounds/batch x ($1/M +")
    print("  execution s x 64 MB x $0.00001667/GB-s); S3 and DynamoDB requests: the fault-free run's, measured,")
    print(f"  per published instance (${MILLION * runs[0].storage_requests:.2f} per million; a quarantine: one status")
    print("  write, the original read, its tags read and written)")
    batch = faulted.objects / max(1, faulted.executions) * max(1, sum(faulted.rounds.values())) / faulted.objects
    seconds_per_execution = (faulted.execution_seconds + faulted.retry_wait_seconds) / max(1, faulted.executions)
    print(f"  (objects per execution {batch:.2f}, execution {seconds_per_execution:.2f} s with the retry waits)")
    print(
        f"  {'path':<26} {'objects':>7} {'transitions':>11} {'GB-s':>8} {'rounds':>6} {'EXPRESS':>10} {'STANDARD':>10}"
    )
    for path in PATHS:
        keys = [k for k, p in faulted.paths.items() if p == path]
        if not keys:
            print(f"  {path:<26} {0:7d}")
            continue
        mean = {
            "transitions": statistics.mean(faulted.transitions[k] for k in keys),
            "gb_seconds": statistics.mean(faulted.gb_seconds[k] for k in keys),
            "calls": statistics.mean(faulted.lambda_calls[k] for k in keys),
            "rounds": statistics.mean(faulted.rounds[k] for k in keys),
        }
        lam = mean["calls"] * PRICE["lambda_per_request"] + mean["gb_seconds"] * PRICE["lambda_arm_per_gb_second"]
        queue = mean["rounds"] * ((1 + 2 / batch) * PRICE["sqs_per_request"] + PRICE["pipes_per_request"] / batch)
        if path == "quarantined":  # the status update; the original read, its tags read and written
            storage = PRICE["dynamodb_per_write_unit"] + PRICE["s3_put_per_request"] + 2 * PRICE["s3_get_per_request"]
        else:
            storage = runs[0].storage_requests
        standard = mean["transitions"] * PRICE["standard_per_transition"]
        express = (
            mean["rounds"]
            / batch
            * (
                PRICE["express_per_request"]
                + seconds_per_execution * PRICE["express_memory_gb"] * PRICE["express_per_gb_second"]
            )
        )
        shared = lam + queue + storage
        print(
            f"  {path:<26} {len(keys):7d} {mean['transitions']:11.2f} {mean['gb_seconds']:8.4f} {mean['rounds']:6.2f}"
            f" {MILLION * (express + shared):10.2f} {MILLION * (standard + shared):10.2f}"
            f"   (Lambda {MILLION * lam:.2f} + queue {MILLION * queue:.2f} + storage {MILLION * storage:.2f}"
            f" + workflow {MILLION * express:.2f} | {MILLION * standard:.2f})"
        )
    other = Counter(p for p in faulted.paths.values() if p not in PATHS)
    if other:
        print(f"  objects that ended on no path: {dict(other)} (a bug: see tests/workflow/test_faults.py)")
    return 0


def _soak_run(
    label: str, objects: list[tuple[str, bytes]], args: argparse.Namespace, plan: Any, memory: dict[str, int]
) -> SoakRun:
    from deidflow.testing.faults import FaultInjector

    with LocalWorkflow(KEY, project=REPO, batch_size=args.batch_size) as workflow, RequestMeter(workflow) as meter:
        started = time.perf_counter()
        with FaultInjector(workflow, plan) as faults:
            keys = [workflow.drop(name, data) for name, data in objects]
            reports = workflow.run_pipe()
        seconds = time.perf_counter() - started
        final: dict[str, str] = {}
        transitions: Counter[str] = Counter()
        rounds: Counter[str] = Counter()
        for report in reports:
            paths = [o for o in report.objects if o.status != "skipped" or o.key in keys]
            # The batch's own states (ExpandBatch, the Map, Summarize) shared by its objects.
            own = sum(len(o.states) - 1 for o in paths)
            entered = sum(1 for e in workflow.history(report.execution_arn) if e["type"].endswith("StateEntered"))
            for o in paths:
                transitions[o.key] += len(o.states) - 1 + (entered - own) / max(1, len(paths))
                rounds[o.key] += 1
                final[o.key] = o.status
        gb_seconds: Counter[str] = Counter()
        calls: Counter[str] = Counter()
        for name, key, _round, secs in faults.runs:
            billed = max(0.001, round(secs + 0.0005, 3)) * memory[name] / 1024
            # ExpandBatch's runs name no object: shared by all of them.
            for each in [key] if key else keys:
                share = 1 if key else 1 / len(keys)
                gb_seconds[each] += billed * share
                calls[each] += share
        # Each retried attempt is a state transition too (Standard bills it); one retry per fault
        # but the last of a state's attempts, which is caught into Park instead.
        parks = Counter(key for name, key, *_ in faults.runs if name == "Park")
        for key in keys:
            transitions[key] += max(0, faults.injected_by_key[key] - parks[key])
        paths: dict[str, str] = {}
        for key in keys:
            status = final.get(key, "lost")
            if status == "quarantined":
                paths[key] = "quarantined"
            elif status in ("published", "duplicate"):
                paths[key] = (
                    "parked then published"
                    if parks[key]
                    else "published after retries"
                    if faults.injected_by_key[key]
                    else "published clean"
                )
            else:
                paths[key] = status
        return SoakRun(
            label,
            len(keys),
            seconds,
            len(reports),
            len(faults.retry_waits),
            sum(faults.retry_waits),
            paths,
            dict(transitions),
            dict(gb_seconds),
            dict(calls),
            dict(rounds),
            _execution_seconds(workflow, reports),
            _storage_requests(meter, max(1, sum(1 for p in paths.values() if p != "quarantined"))),
        )


def _storage_requests(meter: RequestMeter, published: int) -> float:
    """The measured S3 and DynamoDB request cost per published instance (USD)."""
    lines = request_costs(meter, published)
    return sum(cost for text, cost in lines if text.startswith(("S3", "DynamoDB"))) / MILLION


def _execution_seconds(workflow: LocalWorkflow, reports: list) -> float:
    """Wall time of all executions (start to stop), from their descriptions."""
    total = 0.0
    for report in reports:
        described = workflow.sfn.describe_execution(executionArn=report.execution_arn)
        total += (described["stopDate"] - described["startDate"]).total_seconds()
    return total


if __name__ == "__main__":
    raise SystemExit(main())
