#!/usr/bin/env python
"""The mutation fuzzer's long soak: many more cases than the test suite runs, and the counts.

    python benchmarks/bench_fuzz.py [--cases 6000] [--seed N] [--jobs 2] [--keep DIR]

Builds `--cases` damaged and hostile variants of PHI-laden seeds (deidflow.testing.mutations:
synthetic instances and pydicom's test files with tokens planted), runs them through the
`deidflow deid` path in one folder (worker processes, time and memory limits, one report line per
input), and judges every line: rejected with a reason, or published without a planted token and
readable back. Prints the outcome per mutation family, the rejection reasons, the throughput, and
every failure. Exits 1 when a case failed (a leak, an unreadable output, or the engine breaking),
so it can gate a release; it is not part of the test suite because it takes minutes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from deidflow.rules import load_rules
from deidflow.testing.mutations import FAMILIES, cases, default_seeds, run_fuzz

KEY = bytes(range(32))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--keep", type=Path, help="keep the cases, outputs and report here")
    args = parser.parse_args()

    started = time.perf_counter()
    seeds = default_seeds()
    fuzz_cases = list(cases(seeds, args.cases, seed=args.seed))
    built = time.perf_counter() - started
    print(f"{len(fuzz_cases)} cases from {len(seeds)} seeds, random seed {args.seed}, built in {built:.1f} s")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        report = run_fuzz(fuzz_cases, folder, rules=load_rules(), key=KEY, jobs=args.jobs)
        ran = time.perf_counter() - started
    print(f"ran in {ran:.1f} s with {args.jobs} worker(s): {len(fuzz_cases) / ran:.1f} cases/s\n")

    table = report.by_family()
    print(f"{'family':14} {'cases':>6} {'rejected':>9} {'published':>10} {'FAILED':>7}")
    for family in FAMILIES:
        counts = table.get(family, {})
        total = sum(counts.values())
        print(
            f"{family:14} {total:6} {counts.get('rejected', 0):9} {counts.get('published', 0):10} "
            f"{counts.get('FAILED', 0):7}"
        )
    outcomes = report.by_outcome()
    print(
        f"{'all':14} {len(report.verdicts):6} {outcomes['rejected']:9} {outcomes['published']:10} "
        f"{outcomes['FAILED']:7}\n"
    )
    print("rejection reasons: " + ", ".join(f"{reason} {n}" for reason, n in report.reasons().most_common()))
    for case, verdict in report.failures:
        print(f"FAILED {case.seed} / {case.family}: {case.what}: {verdict.problem}")
    print("\nPASS: no leak, no unreadable output, no engine failure" if not report.failures else "\nFAIL")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
