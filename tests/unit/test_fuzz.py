"""The mutation fuzzer (deidflow.testing.mutations) against the whole `deidflow deid` path, with
real files from other projects mixed into the same drop folder.

Every fuzz case must end rejected with a reason, or published with none of its planted tokens in
the output's bytes or decoded values and an output pydicom reads back whole; never an exception, a
crash, a hang or a memory blow-up. `DEIDFLOW_FUZZ_CASES` and `DEIDFLOW_FUZZ_SEED` run more, or
other, cases; `benchmarks/bench_fuzz.py` is the long soak.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from deidflow.rules import load_rules
from deidflow.testing.mutations import FAMILIES, cases, default_seeds, run_fuzz

from ..conftest import TEST_KEY
from ..realfiles import real_files

CASES = int(os.environ.get("DEIDFLOW_FUZZ_CASES", "600"))
SEED = int(os.environ.get("DEIDFLOW_FUZZ_SEED", "20261201"))


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    fuzz_cases = list(cases(default_seeds(), CASES, seed=SEED))
    return run_fuzz(fuzz_cases, tmp_path_factory.mktemp("fuzz"), rules=load_rules(), key=TEST_KEY, others=real_files())


@pytest.mark.slow
def test_no_fuzz_case_publishes_a_planted_token_or_breaks_the_engine(fuzz_run):
    failures = [f"{case.seed} / {case.family}: {case.what}: {verdict.problem}" for case, verdict in fuzz_run.failures]
    assert not failures, f"{len(failures)} of {len(fuzz_run.verdicts)} cases failed:\n" + "\n".join(failures[:30])
    assert len(fuzz_run.verdicts) == CASES
    by_family = fuzz_run.by_family()
    assert set(by_family) == set(FAMILIES)
    # The fuzzer does damage (most cases are rejected) without making every case unreadable.
    outcomes = fuzz_run.by_outcome()
    assert outcomes["rejected"] > CASES / 3 and outcomes["published"] > CASES / 10


@pytest.mark.slow
def test_real_files_in_the_same_run_each_have_their_line_and_share_uids_by_the_rule(fuzz_run):
    real = [line for line in fuzz_run.lines if Path(line["input"]).name.startswith("real_")]
    assert len(real) == len(real_files())
    by_uid: dict[str, list[dict]] = defaultdict(list)
    for line in real:
        if line["status"] == "rejected" and line.get("reason") != "sop_instance_uid_conflict":
            continue
        source = pydicom.dcmread(line["input"], stop_before_pixels=True, force=True)
        by_uid[str(source.SOPInstanceUID)].append(line)
    shared = {uid: lines for uid, lines in by_uid.items() if len(lines) > 1}
    assert shared, "real files from several packages share SOP Instance UIDs"
    for lines in shared.values():
        first, *later = lines
        assert first["status"] == "deidentified"
        for line in later:
            assert line["same_as"] == first["input"]
            assert line["status"] == "duplicate" or line["reason"] == "sop_instance_uid_conflict"
