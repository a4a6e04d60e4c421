"""Throttling from S3, DynamoDB, Lambda and the text detector (deidflow.testing.faults) on the
local workflow: the real state machine and handlers on moto. Throttling that clears is retried
by the state; throttling that outlasts the state's retries parks the object, and the redrive
publishes it; either way the end state is the one a fault-free run reaches (tests/workflow/endstate.py).
"""

from __future__ import annotations

import json
from urllib.parse import unquote_plus

import pytest
from deidflow.cloud.budget import LAST_RESORT_RETRIES
from deidflow.testing.faults import FaultInjector, FaultPlan
from deidflow.testing.synthetic import make_burned_in_ultrasound, make_corpus

from tests.conftest import dicom_bytes
from tests.workflow.endstate import Dropped, as_text, end_state, leaks, phi_needles


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_patients=1, studies_per_patient=1, images_per_series=3, rows=8, columns=8)


def drop_corpus(workflow, corpus) -> list[Dropped]:
    dropped = []
    for n, instance in enumerate(corpus.instances):
        data = dicom_bytes(instance.dataset)
        dropped.append(Dropped(workflow.drop(f"{instance.patient.name}/{n:03d}.dcm", data), data))
    return dropped


def assert_end_state(workflow, dropped, reports) -> None:
    state = end_state(workflow, dropped, reports)
    assert not state.problems, "\n".join(state.problems)


@pytest.mark.parametrize(
    ("states", "services", "rate"),
    [
        (("DeidentifyHeader", "IndexHeader"), ("s3",), 0.15),
        (("DeidentifyHeader", "IndexHeader"), ("dynamodb",), 0.15),
        (("DeidentifyHeader", "IndexHeader"), ("lambda",), 0.15),
        # The header step's claim, generation and status updates around its write to the research
        # key: a retried run reads, claims and writes again, under the same publish generation
        # (Publish's copy once had the like: a retry that found its staging copy gone called a
        # published object `missing`).
        (("DeidentifyHeader",), ("dynamodb",), 0.5),
    ],
)
def test_throttling_that_clears_is_retried_by_the_state(workflow, corpus, states, services, rate):
    dropped = drop_corpus(workflow, corpus)
    plan = FaultPlan(rate=rate, seed=3, services=services, states=states)
    with FaultInjector(workflow, plan) as faults:
        reports = workflow.run_pipe()

    calls = [name for name, _ in workflow.invocations]
    assert sum(faults.injected.values()) and faults.retry_waits  # the state machine retried
    assert_end_state(workflow, dropped, reports)
    assert "Quarantine" not in calls


@pytest.mark.parametrize(
    ("state", "service"),
    [
        ("DeidentifyHeader", "s3"),
        ("DeidentifyHeader", "dynamodb"),
        ("DeidentifyHeader", "lambda"),
        ("IndexHeader", "s3"),
        ("IndexHeader", "lambda"),
    ],
)
def test_throttling_that_outlasts_the_retries_parks_the_object_and_the_redrive_publishes_it(
    workflow, corpus, state, service
):
    dropped = drop_corpus(workflow, corpus)
    stubborn = dropped[1].key
    with FaultInjector(workflow, FaultPlan(stubborn={stubborn: (state, service)})) as faults:
        reports = workflow.run_pipe()

    calls = [name for name, _ in workflow.invocations]
    parked = [o for r in reports for o in r.objects if o.status == "parked"]
    assert [o.key for o in parked] == [stubborn] and parked[0].states[-2:] == [state, "Park"]
    assert calls.count("Park") == 1 and "Quarantine" not in calls
    # The first call and the state's five retries, all answered with the fault.
    assert sum(n for (where, name), n in faults.injected.items() if where == state and name.startswith(service)) >= 6
    assert_end_state(workflow, dropped, reports)


@pytest.mark.parametrize("service", ["s3", "lambda", "dynamodb"])
def test_throttling_that_outlasts_publishs_retries_parks_a_scanned_instance_and_the_redrive_publishes_it(
    workflow, service
):
    """Publish runs on the pixel path only (what needs no scan the header step publishes itself):
    a burned-in ultrasound whose Publish is throttled through all its retries is parked with its
    staging copy discarded, and the redrive publishes it."""
    us, _, _ = make_burned_in_ultrasound()
    data = dicom_bytes(us)
    key = workflow.drop("Ysolderan^Kasimir/echo.dcm", data)
    with FaultInjector(workflow, FaultPlan(stubborn={key: ("Publish", service)})) as faults:
        reports = workflow.run_pipe()

    assert sum(n for (where, name), n in faults.injected.items() if where == "Publish") >= 6
    [first, second] = [o for r in reports for o in r.objects]
    assert first.states[-2:] == ["Publish", "Park"] and first.status == "parked"
    assert second.states[-3:] == ["RedactBurnedInText", "Publish", "IndexHeader"] and second.status == "published"
    assert_end_state(workflow, [Dropped(key, data)], reports)


def test_a_throttled_text_detector_is_retried_then_parked_never_pixels_failed(workflow):
    """Rekognition throttling a burned-in ultrasound's scan (the detector raising DetectorBusy):
    retried, then parked through every retry, and published by the redrive; never `pixels_failed`."""
    us, _, _ = make_burned_in_ultrasound()
    data = dicom_bytes(us)
    key = workflow.drop("Ysolderan^Kasimir/echo.dcm", data)
    with FaultInjector(workflow, FaultPlan(stubborn={key: ("RedactBurnedInText", "detector")})) as faults:
        reports = workflow.run_pipe()

    assert faults.injected[("RedactBurnedInText", "detector.ThrottlingException")] == 6
    [first, second] = [o for r in reports for o in r.objects]
    assert first.states[-2:] == ["RedactBurnedInText", "Park"] and first.status == "parked"
    assert second.states[-3:] == ["RedactBurnedInText", "Publish", "IndexHeader"] and second.status == "published"
    assert_end_state(workflow, [Dropped(key, data)], reports)


def test_the_harness_is_never_faulted_and_leaving_the_injector_ends_the_faults(workflow, corpus):
    """Every call a handler makes is answered with a fault, the test's own (drops, the queue,
    reads of the tables) none; after the injector, a run is fault-free again."""
    from deidflow.cloud.errors import TransientError
    from deidflow.local.workflow import LambdaContext

    def call(name, event):
        return workflow.handlers[name](event, LambdaContext(workflow.function_arn(name)))

    with FaultInjector(workflow, FaultPlan(rate=1.0)) as faults:
        dropped = drop_corpus(workflow, corpus)
        messages = workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=1)["Messages"]
        workflow.table_items(workflow.names.status_table)
        expanded = call("ExpandBatch", [workflow._pipe_record(messages[0])])  # S3 and DynamoDB untouched
        with pytest.raises(TransientError):
            call("DeidentifyHeader", expanded["objects"][0])
        workflow.sqs.change_message_visibility(
            QueueUrl=workflow.queue_url, ReceiptHandle=messages[0]["ReceiptHandle"], VisibilityTimeout=0
        )
    assert list(faults.injected) == [("DeidentifyHeader", "s3.SlowDown")] or set(faults.injected) <= {
        ("DeidentifyHeader", "s3.SlowDown"),
        ("DeidentifyHeader", "s3.ServiceUnavailable"),
    }
    injected = sum(faults.injected.values())
    reports = workflow.run_pipe()
    assert sum(faults.injected.values()) == injected
    assert_end_state(workflow, dropped, reports)


def test_no_object_key_in_the_execution_history(workflow, corpus):
    dropped = drop_corpus(workflow, corpus)
    reports = workflow.run_pipe()
    histories = as_text([workflow.history(r.execution_arn) for r in reports])
    assert not leaks(histories, phi_needles(corpus.planted_values(), workflow.names.ingest_prefix))
    assert not [d.key for d in dropped if json.dumps(d.key)[1:-1] in histories]


def test_an_object_that_cannot_even_be_parked_fails_its_own_message_only(workflow, corpus):
    """Park outlasting its retries too (every call it makes throttled): the execution still
    succeeds, names that object's SQS message in batchItemFailures, and the Pipe deletes the
    batch's other messages; the failed one comes back and, the faults over, is published."""
    dropped = drop_corpus(workflow, corpus)
    stubborn = dropped[1].key
    plan = FaultPlan(
        rate=1.0, services=("s3", "lambda"), states=("Park",), stubborn={stubborn: ("DeidentifyHeader", "s3")}
    )
    with FaultInjector(workflow, plan) as faults:
        [report] = workflow.run_pipe(batches=1)

    assert report.status == "SUCCEEDED"
    assert [(o.key, o.status) for o in report.objects if o.status != "published"] == [(stubborn, "unparked")]
    assert sum(n for (where, _), n in faults.injected.items() if where == "Park") >= 1 + LAST_RESORT_RETRIES
    [left] = workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=10)["Messages"]
    assert report.item_failures == [left["MessageId"]]
    assert [unquote_plus(r["s3"]["object"]["key"]) for r in json.loads(left["Body"])["Records"]] == [stubborn]
    workflow.sqs.change_message_visibility(
        QueueUrl=workflow.queue_url, ReceiptHandle=left["ReceiptHandle"], VisibilityTimeout=0
    )
    reports = [report, *workflow.run_pipe()]
    assert [o.status for o in reports[-1].objects] == ["published"]
    assert_end_state(workflow, dropped, reports)


def test_in_a_standard_workflow_an_object_that_cannot_be_parked_waits_and_is_parked_again(corpus):
    """Standard: the Pipe deleted the batch when the execution started, so a failed Park cannot
    hand the message back; the object waits in its execution (ParkAgainSeconds) and is parked
    again, and the redrive publishes it. At least once, with nothing left on the queues."""
    from deidflow.local.workflow import LocalWorkflow

    from tests.conftest import REPO, TEST_KEY

    with LocalWorkflow(TEST_KEY, project=REPO, workflow_type="STANDARD") as workflow:
        dropped = drop_corpus(workflow, corpus)
        stubborn = dropped[0].key
        with FaultInjector(workflow, FaultPlan(stubborn={stubborn: ("DeidentifyHeader", "s3")})):
            park = workflow.handlers["Park"]
            failures = []

            def failing_once(event, context):
                if not failures:
                    failures.append(event)
                    raise RuntimeError("the queue is unreachable")
                return park(event, context)

            workflow.handlers["Park"] = failing_once
            reports = workflow.run_pipe()

        [first] = [o for o in reports[0].objects if o.key == stubborn]
        assert first.states[-5:] == ["Park", "ParkFailed", "HoldOrHandBack", "WaitToParkAgain", "Park"]
        assert first.status == "parked" and len(failures) == 1 and not reports[0].item_failures
        assert_end_state(workflow, dropped, reports)


def test_a_slow_object_that_would_overrun_the_express_budget_finishes_in_the_long_lane(workflow, corpus, monkeypatch):
    """Its header step takes 200 s (the handlers' clock moved on by that much): IndexHeader, the
    next state, could no longer finish, with Quarantine's and Park's reserve, before the Express
    deadline, so it does not start. Park sends the object to the long lane, a Standard execution,
    which publishes it again (the same bytes, the same generation) and indexes it; the Express
    execution ends in time and its batch is not failed."""
    import time as real_time

    from deidflow.cloud import handler

    class Clock:
        offset = 0.0

        @staticmethod
        def time() -> float:
            return real_time.time() + Clock.offset

    monkeypatch.setattr(handler, "time", Clock)
    [instance, *_] = corpus.instances
    data = dicom_bytes(instance.dataset)
    dropped = [Dropped(workflow.drop(f"{instance.patient.name}/slow.dcm", data), data)]
    deidentify = workflow.handlers["DeidentifyHeader"]

    def slow(event, context):
        answer = deidentify(event, context)
        Clock.offset += 200
        return answer

    workflow.handlers["DeidentifyHeader"] = slow
    reports = workflow.run_pipe()

    express, long_lane = reports
    [first] = express.objects
    assert express.status == "SUCCEEDED" and express.execution_arn.split(":")[-2].endswith("-deidentify")
    assert first.states[-2:] == ["IndexHeader", "Park"] and (first.status, first.detail) == ("parked", "OutOfTime")
    assert long_lane.status == "SUCCEEDED" and long_lane.execution_arn.split(":")[-2].endswith("-deidentify-long")
    assert [(o.key, o.status) for o in long_lane.objects] == [(dropped[0].key, "published")]
    assert_end_state(workflow, dropped, reports)


@pytest.mark.parametrize("service", ["lambda", "s3"])
def test_throttling_that_outlasts_the_redrive_rounds_waits_for_capacity_and_is_published(workflow, corpus, service):
    """A drop bigger than the capacity: the object's header step throttled (Lambda's reserved
    concurrency, S3's request rate) through its retries in more rounds than RedriveRounds allows.
    Throttling is backpressure, not a fault: the object waits in the queue for capacity, no round
    counted, never reaches the dead-letter queue, and is published once there is room."""
    dropped = drop_corpus(workflow, corpus)
    stubborn = dropped[1].key
    rounds = int(workflow.environment["REDRIVE_ROUNDS"]) + 2
    plan = FaultPlan(stubborn={stubborn: ("DeidentifyHeader", service)}, stubborn_rounds=rounds)
    with FaultInjector(workflow, plan):
        reports = workflow.run_pipe()

    paths = [o for r in reports for o in r.objects if o.key == stubborn]
    assert [o.status for o in paths] == ["parked"] * rounds + ["published"]
    assert_end_state(workflow, dropped, reports)
