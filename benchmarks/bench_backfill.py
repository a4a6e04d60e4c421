#!/usr/bin/env python
"""Backfill on its real state machine: objects/s for an archive on moto, and the skip rate of a rerun.

    python benchmarks/bench_backfill.py [--count 2000] [--concurrency 10]

Puts `--count` small synthetic objects (CT slices of 8x8 and SRs in folders named after their
patients, 2.5 % junk that must be quarantined) under archive/ of the local ingest bucket, runs the
backfill state machine (statemachines/backfill.asl.json: plan, the Distributed Map of batches, each
through the deidentify state machine, finish) on moto with the real handlers, then runs it again
over the same archive: the rerun must submit nothing and skip every object as done. Prints the
times, objects/s, the outcome counts and the Standard state transitions the backfill adds per
million objects (its own states; the deidentify executions it starts cost what
bench_workflow.py measures). Times are of moto on this machine (one Lambda call at a time, as
LocalWorkflow runs them), not of AWS. Exits 0: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import secrets
import sys
import time
from pathlib import Path

from deidflow.local.backfill import ARCHIVE_PREFIX, LocalBackfill
from deidflow.local.workflow import LocalWorkflow
from deidflow.testing.synthetic import make_corpus

REPO = Path(__file__).resolve().parents[1]
MILLION = 1_000_000
STANDARD_TRANSITION = 0.025 / 1000  # USD, us-east-1


def archive_objects(count: int, seed: int = 16) -> list[tuple[str, bytes]]:
    """(key under the archive prefix, bytes): tiny CT and SR instances in patient folders, and junk."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import dcmwrite

    junk = max(1, count // 40)
    per_patient = 2 * 10
    corpus = make_corpus(
        n_patients=-(-(count - junk) // per_patient), studies_per_patient=2, images_per_series=9, rows=8, columns=8
    )
    objects = []
    for n, instance in enumerate(corpus.instances[: count - junk]):
        buffer = DicomBytesIO()
        dcmwrite(buffer, instance.dataset, enforce_file_format=True)
        objects.append((f"{instance.patient.name}/{n:05d}.dcm", buffer.getvalue()))
    rng = random.Random(seed)
    for n in range(junk):
        objects.append((f"{objects[rng.randrange(len(objects))][0].split('/')[0]}/junk{n:03d}.dcm", b"not dicom"))
    return objects


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="objects in the archive (default 2,000)")
    parser.add_argument("--concurrency", type=int, default=10, help="BackfillConcurrency (default 10)")
    args = parser.parse_args(argv)
    logging.getLogger("moto.stepfunctions").setLevel(logging.CRITICAL)  # IsPresent misses, logged as errors

    objects = archive_objects(args.count)
    with LocalWorkflow(secrets.token_bytes(32), project=REPO) as workflow:
        os.environ["BACKFILL_CONCURRENCY"] = str(args.concurrency)
        backfill = LocalBackfill(workflow)
        started = time.perf_counter()
        for key, data in objects:
            workflow.s3.put_object(Bucket=workflow.names.ingest_bucket, Key=ARCHIVE_PREFIX + key, Body=data)
        put_seconds = time.perf_counter() - started

        first = backfill.run(timeout=7200)
        rerun = backfill.run(run=first.run, timeout=7200)
        definition = json.loads((REPO / "statemachines" / "backfill.asl.json").read_text())

    batch = int(os.environ.get("BACKFILL_BATCH_OBJECTS") or 10)
    per_batch = len(definition["States"]["Batches"]["ItemProcessor"]["States"]) - 1  # Prepare, AnyToDo, one of two
    print(f"archive: {len(objects)} objects put under {ARCHIVE_PREFIX} in {put_seconds:.1f} s")
    for label, run in (("backfill", first), ("rerun", rerun)):
        print(
            f"{label:8} {run.status:9} {run.seconds:7.1f} s  {run.objects_per_second:6.1f} objects/s  "
            f"submitted {run.submitted}, skipped as done {run.skipped_as_done} "
            f"({run.skipped_as_done / max(1, run.counts['objects']):.1%}), redrive executions {len(run.redrives)}"
        )
        print(f"         {json.dumps(run.counts)}")
    transitions = per_batch / batch
    print(
        f"Standard transitions the backfill adds: {per_batch} per batch of {batch} = {transitions:.2f} per object; "
        f"{MILLION:,} x {transitions:.2f} x ${STANDARD_TRANSITION * 1000:.3f} / 1,000 = "
        f"${MILLION * transitions * STANDARD_TRANSITION:,.2f} per million objects (plus plan and finish: "
        "a few per chunk of 50,000), on top of the deidentify executions"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
