"""Object versions on the local workflow, with notifications as AWS sends them (versionId,
sequencer): a delete before processing publishes nothing, a replayed or late event of an older
version never brings its content back, and the end state of bucket, index and status agrees."""

from __future__ import annotations

import copy
import json

import pytest
from deidflow.testing.synthetic import make_corpus

from tests.conftest import dicom_bytes


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_patients=1, studies_per_patient=1, images_per_series=2)


def take_message(workflow) -> str:
    """The notification just sent, read and put back (visible again at once): its body, to replay."""
    [message] = [
        m
        for m in workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=10)["Messages"]
        if "Records" in m["Body"]
    ]
    workflow.sqs.change_message_visibility(
        QueueUrl=workflow.queue_url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0
    )
    return str(message["Body"])


def status_of(workflow, key: str, version_id: str) -> dict:
    ref = workflow.object_ref(key)
    return next(
        i
        for i in workflow.table_items(workflow.names.status_table)
        if i["object_ref"] == ref and i["version_id"] == version_id
    )


def test_notifications_carry_the_version_and_a_sequencer_that_grows(workflow):
    workflow.drop("p/a.dcm", b"one")
    workflow.drop("p/a.dcm", b"two")
    messages = workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=10)["Messages"]
    objects = [json.loads(m["Body"])["Records"][0]["s3"]["object"] for m in messages]
    versions = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket)["Versions"]
    assert sorted(o["versionId"] for o in objects) == sorted(v["VersionId"] for v in versions)
    latest = next(v for v in versions if v["IsLatest"])["VersionId"]
    assert max(objects, key=lambda o: o["sequencer"])["versionId"] == latest


def test_an_object_deleted_before_processing_is_not_published(workflow, corpus):
    """The version-pinned read could still fetch it: the delete marker on top decides."""
    key = workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    [version] = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket)["Versions"]
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)
    reports = workflow.run_pipe()

    assert {r.status for r in reports} == {"SUCCEEDED"}
    assert workflow.research_objects() == {} and workflow.research_objects(prefix="staging/") == {}
    assert workflow.table_items(workflow.names.index_table) == []
    status = status_of(workflow, key, version["VersionId"])
    assert status["status"] == "skipped" and status["reason"] == "missing"


def test_a_replayed_event_of_an_older_version_never_brings_its_content_back(workflow, corpus):
    """v1 is published, then a corrected v2 under the same key; v1's event comes again (an SQS
    redelivery, a DLQ redrive): it is skipped as superseded, and the research object and its
    index entry stay v2's."""
    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.SliceThickness = "7.25"  # kept by the profile, so the index shows which version it describes
    key = workflow.drop("p/img.dcm", dicom_bytes(first))
    old_event = take_message(workflow)
    workflow.run_pipe()
    published_v1 = workflow.research_objects()
    workflow.drop("p/img.dcm", dicom_bytes(corrected))
    workflow.run_pipe()
    published_v2 = workflow.research_objects()
    assert list(published_v2) == list(published_v1) and published_v2 != published_v1  # same instance, new content
    [indexed_v2] = workflow.table_items(workflow.names.index_table)
    assert json.loads(indexed_v2["dicom_json"])["00180050"]["Value"] == [7.25]

    workflow.sqs.send_message(QueueUrl=workflow.queue_url, MessageBody=old_event)  # the replay
    reports = workflow.run_pipe()

    assert {r.status for r in reports} == {"SUCCEEDED"}
    assert workflow.research_objects() == published_v2
    assert workflow.table_items(workflow.names.index_table) == [indexed_v2]
    v1 = json.loads(old_event)["Records"][0]["s3"]["object"]["versionId"]
    status = status_of(workflow, key, v1)
    assert status["status"] == "skipped" and status["reason"] == "superseded"
    assert workflow.research_objects(prefix="staging/") == {}
