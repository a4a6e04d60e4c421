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


def pop_message(workflow) -> dict:
    """The notification just sent, taken off the queue, as the Pipe hands it to ExpandBatch."""
    [message] = [
        m
        for m in workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=10)["Messages"]
        if "Records" in m["Body"]
    ]
    workflow.sqs.delete_message(QueueUrl=workflow.queue_url, ReceiptHandle=message["ReceiptHandle"])
    return workflow._pipe_record(message)


def step(workflow, name: str, event):
    """One state's handler, called as the state machine calls it."""
    from deidflow.local.workflow import LambdaContext

    return workflow.handlers[name](event, LambdaContext(workflow.function_arn(name)))


def staged_by_hand(workflow, data: bytes) -> dict:
    """An upload taken as far as its staging copy (ExpandBatch, DeidentifyHeader), by hand: the
    rest of its run is then played in whatever order a test needs."""
    workflow.drop("p/img.dcm", data)
    [item] = step(workflow, "ExpandBatch", [pop_message(workflow)])["objects"]
    return step(workflow, "DeidentifyHeader", item)


def test_a_study_uid_corrected_on_re_send_moves_the_instance(workflow, corpus):
    """The same SOP Instance re-sent under the same key with a corrected Study Instance UID: one
    research object, at the new place; the index item and the catalog name the new study only."""
    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.99999"
    workflow.drop("p/img.dcm", dicom_bytes(first))
    workflow.run_pipe()
    [old_key] = workflow.research_objects()
    workflow.drop("p/img.dcm", dicom_bytes(corrected))
    reports = workflow.run_pipe()

    assert {r.status for r in reports} == {"SUCCEEDED"}
    [new_key] = workflow.research_objects()
    assert new_key != old_key and new_key.split("/")[1] != old_key.split("/")[1]
    [item] = workflow.table_items(workflow.names.index_table)
    assert item["research_key"] == new_key and item["study_instance_uid"] == new_key.split("/")[1]
    catalog = workflow.table_items(workflow.names.catalog_table)
    assert {c["study_instance_uid"] for c in catalog} == {item["study_instance_uid"]}
    assert workflow.research_objects(prefix="staging/") == {}


def test_a_newer_version_published_while_an_older_one_was_copying_ends_on_top(workflow, corpus):
    """v1 passes the check before its copy; v2 is uploaded and published meanwhile; v1's copy then
    lands on top. The check after the copy sees it, sends v2 through the queue again and leaves
    v1 unindexed: once the queue is dry, bucket and index are v2's."""
    from deidflow.cloud.handler import current_services

    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.SliceThickness = "7.25"
    staged_v1 = staged_by_hand(workflow, dicom_bytes(first))
    s3 = current_services().s3
    real_copy = s3.copy_object

    def v2_goes_first(**kwargs):
        s3.copy_object = real_copy
        workflow.drop("p/img.dcm", dicom_bytes(corrected))
        assert {r.status for r in workflow.run_pipe()} == {"SUCCEEDED"}
        return real_copy(**kwargs)

    s3.copy_object = v2_goes_first
    with pytest.raises(Exception, match="superseded"):
        step(workflow, "Publish", staged_v1)
    reports = workflow.run_pipe()  # v2, sent again by v1's Publish

    assert [r.status for r in reports] == ["SUCCEEDED"]
    [(key, data)] = workflow.research_objects().items()
    [item] = workflow.table_items(workflow.names.index_table)
    assert item["research_key"] == key
    assert json.loads(item["dicom_json"])["00180050"]["Value"] == [7.25]
    assert b"7.25" in data


def test_an_older_versions_late_index_write_never_replaces_a_newer_ones(workflow, corpus):
    """v1 is published, then v2 is published and indexed, then v1's IndexHeader runs (a slow
    Lambda, a retry): the publish generation keeps v2's index item, and v1's staging copy goes."""
    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.SliceThickness = "7.25"
    staged_v1 = staged_by_hand(workflow, dicom_bytes(first))
    published_v1 = step(workflow, "Publish", staged_v1)
    workflow.drop("p/img.dcm", dicom_bytes(corrected))
    workflow.run_pipe()
    [indexed_v2] = workflow.table_items(workflow.names.index_table)

    late = step(workflow, "IndexHeader", published_v1)

    assert late["indexed"]["current"] is False
    assert workflow.table_items(workflow.names.index_table) == [indexed_v2]
    assert json.loads(indexed_v2["dicom_json"])["00180050"]["Value"] == [7.25]
    assert b"7.25" in next(iter(workflow.research_objects().values()))
    assert workflow.research_objects(prefix="staging/") == {}


def test_an_original_deleted_while_it_was_copying_is_taken_back(workflow, corpus):
    from deidflow.cloud.handler import current_services

    staged = staged_by_hand(workflow, dicom_bytes(corpus.instances[0].dataset))
    s3 = current_services().s3
    real_copy = s3.copy_object

    def deleted_meanwhile(**kwargs):
        s3.copy_object = real_copy
        workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=workflow.names.ingest_prefix + "p/img.dcm")
        return real_copy(**kwargs)

    s3.copy_object = deleted_meanwhile
    with pytest.raises(Exception, match="missing"):
        step(workflow, "Publish", staged)

    assert workflow.research_objects() == {}
    assert workflow.table_items(workflow.names.index_table) == []


def test_an_object_whose_publish_outlasts_the_retries_is_never_indexed_before_it_is_published(workflow, corpus):
    """The index comes after Publish: S3 failing the copy through all its retries parks the
    object with no index item naming an object that is not in the bucket; the redrive publishes it."""
    from botocore.exceptions import ClientError
    from deidflow.cloud.handler import current_services

    s3 = current_services().s3
    real_copy = s3.copy_object
    seen = []

    def slow_down(**kwargs):
        if len(seen) < 6:  # the first call and its five retries
            seen.append(workflow.table_items(workflow.names.index_table))
            answer = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}
            raise ClientError(answer, "CopyObject")
        return real_copy(**kwargs)

    s3.copy_object = slow_down
    key = workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    reports = workflow.run_pipe()

    assert [r.status for r in reports] == ["SUCCEEDED", "SUCCEEDED"]
    assert seen == [[]] * 6  # never an index item while the object was not published
    [item] = workflow.table_items(workflow.names.index_table)
    assert list(workflow.research_objects()) == [item["research_key"]]
    version = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket, Prefix=key)["Versions"][0]
    assert status_of(workflow, key, version["VersionId"])["status"] == "published"
