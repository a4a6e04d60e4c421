"""Backfill (issue 16, part 4): an archive already in the ingest bucket, through the backfill state
machine (statemachines/backfill.asl.json) on moto, each batch through the deidentify state machine.

What must hold, however the run went (a failed batch, a parked object, a rerun): every object
published once or quarantined with its content's reason (tests/workflow/endstate.py, the same end
state as the ingest path's), what a run found done not submitted again, and no key in clear in a
backfill execution's history.
"""

from __future__ import annotations

import base64
import json
from collections import Counter

import pytest
from deidflow.cloud.errors import ProcessingError
from deidflow.local.backfill import ARCHIVE_PREFIX, LocalBackfill, put_inventory
from deidflow.testing.faults import FaultInjector, FaultPlan

from tests.workflow.endstate import Dropped, as_text, end_state, leaks, phi_needles
from tests.workflow.test_soak import soak_objects


def put_archive(workflow, count: int, prefix: str = ARCHIVE_PREFIX, seed: int = 16) -> tuple[list[Dropped], list[str]]:
    """`count` soak objects (CT and SR in folders named after their patients, junk, byte-identical
    copies, a burned-in ultrasound) under `prefix` of the ingest bucket, where nothing is notified."""
    objects, planted = soak_objects(count, seed=seed)
    dropped = [
        Dropped(prefix + key, data, copy_of=prefix + copy_of if copy_of else None, quarantine=reason)
        for key, data, copy_of, reason in objects
    ]
    for d in dropped:
        workflow.s3.put_object(Bucket=workflow.names.ingest_bucket, Key=d.key, Body=d.data)
    return dropped, planted


def publishes_by_key(workflow) -> Counter[str]:
    # Every publication, by the header step itself or by Publish after a scan, is indexed once after.
    return Counter(key for name, key in workflow.invocations if name == "IndexHeader")


def assert_end_state(workflow, dropped, runs) -> None:
    state = end_state(workflow, dropped, [r for run in runs for r in run.redrives])
    assert not state.problems, state.problems


def test_a_backfill_publishes_every_object_once_and_a_rerun_skips_them_all(workflow):
    dropped, _ = put_archive(workflow, 40)
    backfill = LocalBackfill(workflow)
    seen: list[dict[str, int]] = []

    first = backfill.run(on_progress=seen.append, interval=0.0)

    assert first.status == "SUCCEEDED", first.error
    junk = sum(1 for d in dropped if d.quarantine)
    assert first.counts == {
        "objects": 40,
        "published": 40 - junk,
        "quarantined": junk,
        "skipped": 0,
        "parked": 0,
        "stalled": 0,
        "remaining": 0,
    }
    assert first.submitted == 40 and first.skipped_as_done == 0
    assert seen and seen[0]["objects"] <= 40  # progress was reported while it ran
    assert_end_state(workflow, dropped, [first])
    assert max(publishes_by_key(workflow).values()) == 1
    research = workflow.research_objects()

    again = backfill.run(run=first.run)

    assert again.status == "SUCCEEDED", again.error
    assert again.skipped_as_done == 40 and again.submitted == 0
    assert again.counts == first.counts
    assert max(publishes_by_key(workflow).values()) == 1  # nothing published twice
    assert workflow.research_objects() == research


def test_objects_the_ingest_path_or_an_earlier_backfill_published_are_skipped_and_counted(workflow):
    dropped, _ = put_archive(workflow, 30)
    backfill = LocalBackfill(workflow)
    first_folder = dropped[0].key.split("/")[1]
    earlier = backfill.run(prefix=f"{ARCHIVE_PREFIX}{first_folder}/")
    done_before = earlier.counts["objects"]
    assert earlier.status == "SUCCEEDED" and 0 < done_before < 30

    whole = backfill.run()

    assert whole.status == "SUCCEEDED", whole.error
    assert whole.skipped_as_done == done_before
    assert whole.submitted == 30 - done_before
    assert whole.counts["remaining"] == 0 and whole.counts["objects"] == 30
    assert_end_state(workflow, dropped, [earlier, whole])
    assert max(publishes_by_key(workflow).values()) == 1


def test_a_backfill_resumes_after_an_injected_failure_with_no_duplicates_and_no_gaps(workflow):
    dropped, _ = put_archive(workflow, 60)
    backfill = LocalBackfill(workflow)
    # Two batches' Prepare fails (a crashed function: not retried) and one object's publication
    # (the header step's write) is throttled through all its retries (parked, then back through
    # the queue). On AWS the failed batches fail the Map Run; moto's Map Run succeeds over them,
    # and Finish finds the gap. The plan batches keys in listing order, ten a batch: the second and
    # fourth batches crash.
    listed = sorted(d.key for d in dropped)
    crash_first = {workflow.object_ref(listed[10]), workflow.object_ref(listed[30])}
    handle = workflow.handlers["Backfill"]

    def crashing(event, context):
        if event.get("step") == "prepare" and event["objects"][0]["ref"] in crash_first:
            raise ProcessingError("injected: the function crashed")
        return handle(event, context)

    workflow.handlers["Backfill"] = crashing
    fine = {d.key for d in dropped if d.quarantine is None and d.copy_of is None}
    stubborn = next(key for key in listed[:10] if key in fine)
    plan = FaultPlan(stubborn={stubborn: ("DeidentifyHeader", "s3")})
    with FaultInjector(workflow, plan) as faults:
        failed = backfill.run()
    assert faults.injected, "the header step's fault never fired"
    assert failed.status == "FAILED" and failed.error == "BackfillIncomplete"
    assert failed.counts["remaining"] == 20  # two batches of 10, nothing of them done
    assert failed.counts["published"] + failed.counts["quarantined"] == 40
    assert [o.status for r in failed.redrives for o in r.objects] == ["published"]  # its redrive
    done_first = set(publishes_by_key(workflow))
    before = len(workflow.invocations)

    workflow.handlers["Backfill"] = handle
    resumed = backfill.run(run=failed.run)

    assert resumed.status == "SUCCEEDED", resumed.error
    assert resumed.skipped_as_done == 40 and resumed.submitted == 20
    assert resumed.counts["remaining"] == 0 and resumed.counts["objects"] == 60
    assert_end_state(workflow, dropped, [failed, resumed])  # no gaps, one research object per instance
    # No duplicate publication: the resume published only what the failed batches held.
    published_again = {key for name, key in workflow.invocations[before:] if name == "IndexHeader"}
    assert published_again and not published_again & done_first
    assert len(done_first | published_again) == sum(1 for d in dropped if not d.quarantine)


def test_an_s3_inventory_manifest_backfills_what_it_lists(workflow):
    dropped, _ = put_archive(workflow, 30)
    listed = dropped[:18]
    manifest = put_inventory(workflow, [d.key for d in listed], files=2)
    backfill = LocalBackfill(workflow)

    run = backfill.run(manifest_key=manifest)

    assert run.status == "SUCCEEDED", run.error
    assert run.counts["objects"] == 18 and run.counts["remaining"] == 0
    refs = {i["object_ref"] for i in workflow.table_items(workflow.names.status_table)}
    assert {workflow.object_ref(d.key) for d in listed} <= refs
    assert not {workflow.object_ref(d.key) for d in dropped[18:]} & refs  # what it does not list is left alone


def test_no_key_in_clear_in_a_backfill_execution_history(workflow):
    dropped, planted = put_archive(workflow, 20)
    backfill = LocalBackfill(workflow)
    run = backfill.run()
    assert run.status == "SUCCEEDED", run.error
    histories = [workflow.history(run.execution_arn)]
    for machine in (backfill.state_machine_arn, workflow.state_machine_arn):
        for execution in workflow.sfn.list_executions(stateMachineArn=machine)["executions"]:
            histories.append(workflow.history(execution["executionArn"]))
    text = as_text(histories)
    assert "sk1." in text  # the payloads are there, sealed
    # The archive's top prefix is the operator's input, shown as given (docs: name one above the
    # patients' folders); every key below it has a patient's name, which the needles catch.
    needles = [n for n in phi_needles(planted, ARCHIVE_PREFIX) if n != ARCHIVE_PREFIX]
    assert any(d.key.split("/")[1] in needles or any(n in d.key for n in needles) for d in dropped)
    assert not leaks(text, needles)
    chunk = workflow.s3.list_objects_v2(Bucket=workflow.names.ingest_bucket, Prefix="deidflow-backfill/")["Contents"]
    body = workflow.s3.get_object(Bucket=workflow.names.ingest_bucket, Key=chunk[0]["Key"])["Body"].read()
    assert not leaks(json.dumps(json.loads(body)), needles)  # what the Map reads: sealed keys only


@pytest.mark.slow
def test_a_backfill_of_hundreds_of_objects_in_chunks_ends_with_each_published_or_quarantined(workflow):
    # The soak's own seed, whose junk list names the reasons the engine gives. 400 objects in
    # chunks of 150: three Plan rounds and three Map Runs (bench_backfill.py runs 2,000, ~8 min).
    dropped, _ = put_archive(workflow, 400, seed=14)
    backfill = LocalBackfill(workflow)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BACKFILL_CHUNK_OBJECTS", "150")
        run = backfill.run(timeout=3600)
    assert run.status == "SUCCEEDED", run.error
    assert run.counts["objects"] == 400 and run.counts["remaining"] == 0
    assert_end_state(workflow, dropped, [run])


def test_deidflow_backfill_prints_progress_and_the_figures_of_a_run_and_its_rerun(tmp_path, capsys):
    from deidflow import cli

    from tests.conftest import REPO, TEST_KEY

    archive = tmp_path / "archive"
    objects, _ = soak_objects(12, seed=5)
    for key, data, _, _ in objects:
        (archive / key).parent.mkdir(parents=True, exist_ok=True)
        (archive / key).write_bytes(data)
    key_file = tmp_path / "key"
    key_file.write_text(base64.b64encode(TEST_KEY).decode())
    junk = sum(1 for o in objects if o[3])

    code = cli.main(
        [
            "backfill",
            str(archive),
            str(tmp_path / "out"),
            "--rerun",
            "--project",
            str(REPO),
            "--key-file",
            str(key_file),
        ]
    )

    out = capsys.readouterr().out
    assert code == cli.EXIT_SOME_REJECTED, out  # the junk was quarantined
    assert out.count(f"12/12 processed: {12 - junk} published, {junk} quarantined") >= 2
    assert "12 submitted, 0 skipped as done (0%)" in out
    assert "0 submitted, 12 skipped as done (100%)" in out
    assert "objects/s" in out
