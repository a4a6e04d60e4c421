"""The billed requests of a published instance, counted on the local workflow (issue 16's cost
target): counts, not times, so that a step that writes, lists or copies once more per instance
fails here rather than in next month's bill. The designed path for an instance that needs no
pixel scan: the header step reads the original once (its GET says whether the version is still
current), writes the research object once and asks the key again after the write (a HEAD);
IndexHeader reads that version once. No staging copy, no server-side copy, no version listing.
"""

from __future__ import annotations

import pytest
from deidflow.testing.billing import RequestMeter
from deidflow.testing.synthetic import make_corpus

from tests.conftest import REPO, TEST_KEY, dicom_bytes

INSTANCES = 10  # one batch


@pytest.fixture(scope="module")
def metered():
    from deidflow.local.workflow import LocalWorkflow

    corpus = make_corpus(n_patients=2, studies_per_patient=1, images_per_series=5, with_sr=False)
    assert len(corpus.instances) >= INSTANCES
    with LocalWorkflow(TEST_KEY, project=REPO) as workflow, RequestMeter(workflow) as meter:
        for n, instance in enumerate(corpus.instances[:INSTANCES]):
            workflow.drop(f"{instance.patient.name}/{n:03d}.dcm", dicom_bytes(instance.dataset))
        reports = workflow.run_pipe()
        published = [o for r in reports for o in r.objects if o.status == "published"]
        calls = [name for name, _ in workflow.invocations]
    assert len(published) == INSTANCES
    return meter, calls


def per_instance(meter: RequestMeter, state: str, service: str) -> dict[str, float]:
    return {op: n / INSTANCES for (s, svc, op), n in meter.requests.items() if (s, svc) == (state, service)}


def test_a_published_instance_costs_one_s3_put_class_request(metered):
    """The research object's PutObject and nothing else of PUT price (LIST, COPY, PUT are $0.005
    per 1,000; a GET or HEAD $0.0004): a staging write, a copy or a version listing coming back
    per instance would double the largest line of the bill."""
    meter, _ = metered
    assert meter.s3_requests("put") / INSTANCES == 1
    assert per_instance(meter, "DeidentifyHeader", "s3") == {"GetObject": 1, "PutObject": 1, "HeadObject": 1}
    assert per_instance(meter, "IndexHeader", "s3") == {"GetObject": 1}
    assert meter.s3_requests("get") / INSTANCES == 3
    assert meter.s3_requests("other") == 0  # every operation has a known price class


def test_a_published_instance_is_two_lambda_calls_and_its_dynamodb_writes_are_counted(metered):
    """DeidentifyHeader publishes what needs no scan itself, so Publish is not called; the
    DynamoDB writes per instance are the claim with its publish generation (one UpdateItem), the
    mapping row and the status (the header step), the index item and the catalog rows that are
    missing or changed, after one BatchGetItem of them (IndexHeader)."""
    meter, calls = metered
    assert calls.count("DeidentifyHeader") == calls.count("IndexHeader") == INSTANCES
    assert "Publish" not in calls
    assert per_instance(meter, "DeidentifyHeader", "dynamodb") == {"UpdateItem": 2, "PutItem": 1}
    index_header = per_instance(meter, "IndexHeader", "dynamodb")
    assert index_header["BatchGetItem"] == 1 and 1 < index_header["PutItem"] <= 1 + 2
    # Write units from item sizes: the index item's four GSIs and the mapping row's one included.
    index_units = sum(n for (state, table), n in meter.write_units.items() if "IndexTable" in table) / INSTANCES
    assert index_units >= 1 + 4  # the item and its four GSIs
    assert sum(meter.write_units.values()) / INSTANCES <= 15


def test_an_instance_indexed_again_puts_its_index_item_and_no_catalog_row(workflow):
    """The catalog's study and series rows are read (one consistent BatchGetItem) and put only
    when missing or different: an instance indexed again (a redelivered event, a redrive) writes
    its index item and nothing else, where it used to put both rows again (2 write units)."""
    from deidflow.local.workflow import LambdaContext

    def call(name, event):
        return workflow.handlers[name](event, LambdaContext(workflow.function_arn(name)))

    corpus = make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1, with_sr=False)
    workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    [message] = workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=1)["Messages"]
    [item] = call("ExpandBatch", [workflow._pipe_record(message)])["objects"]
    published = call("DeidentifyHeader", item)
    call("IndexHeader", published)
    rows = workflow.table_items(workflow.names.catalog_table)
    assert {r["item"].split("#")[0] for r in rows} == {"study", "series"}
    with RequestMeter(workflow) as meter:
        assert call("IndexHeader", published)["indexed"]["current"] is True
    assert per_instance(meter, "IndexHeader", "dynamodb") == {"PutItem": 1 / INSTANCES, "BatchGetItem": 1 / INSTANCES}
    assert workflow.table_items(workflow.names.catalog_table) == rows
