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


def test_deletes_notify_as_aws_does_a_marker_with_its_version_and_a_version_delete_with_the_deleted_one(workflow):
    key = workflow.drop("p/a.dcm", b"one")
    workflow.drop("p/a.dcm", b"two")
    [v2, v1] = [
        v["VersionId"] for v in workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket)["Versions"]
    ]
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key, VersionId=v1)
    marker = workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)["VersionId"]
    messages = workflow.sqs.receive_message(QueueUrl=workflow.queue_url, MaxNumberOfMessages=10)["Messages"]
    records = [json.loads(m["Body"])["Records"][0] for m in messages]
    removed = sorted(
        (r["eventName"], r["s3"]["object"]["versionId"], sorted(r["s3"]["object"]))
        for r in records
        if r["eventName"].startswith("ObjectRemoved")
    )
    assert removed == [
        ("ObjectRemoved:Delete", v1, ["key", "sequencer", "versionId"]),
        ("ObjectRemoved:DeleteMarkerCreated", marker, ["key", "sequencer", "versionId"]),
    ]
    assert v2 != marker


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


def expanded_by_hand(workflow, data: bytes) -> dict:
    """An upload taken as far as its execution's input (ExpandBatch), by hand: the rest of its run
    is then played in whatever order a test needs."""
    workflow.drop("p/img.dcm", data)
    [item] = step(workflow, "ExpandBatch", [pop_message(workflow)])["objects"]
    return item


def published_by_hand(workflow, data: bytes) -> dict:
    """An upload taken as far as its publish (ExpandBatch, DeidentifyHeader, which publishes what
    needs no pixel scan), by hand, not yet indexed."""
    return step(workflow, "DeidentifyHeader", expanded_by_hand(workflow, data))


def on_research_write(s3, then):
    """`s3.put_object` calls `then()` once, just before it writes a research object (studies/):
    what happens between the header step's read of the original and its publish."""
    real_put = s3.put_object

    def interleaved(**kwargs):
        if kwargs["Key"].startswith("studies/"):
            s3.put_object = real_put
            then()
        return real_put(**kwargs)

    s3.put_object = interleaved


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


def test_a_newer_version_published_while_an_older_one_was_writing_ends_on_top(workflow, corpus):
    """v1 is read as the key's current version; v2 is uploaded and published meanwhile; v1's
    write then lands on top. The check after the write sees it, sends v2 through the queue again
    and leaves v1 unindexed: once the queue is dry, bucket and index are v2's."""
    from deidflow.cloud.handler import current_services

    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.SliceThickness = "7.25"
    item_v1 = expanded_by_hand(workflow, dicom_bytes(first))

    def v2_goes_first():
        workflow.drop("p/img.dcm", dicom_bytes(corrected))
        assert {r.status for r in workflow.run_pipe()} == {"SUCCEEDED"}

    on_research_write(current_services().s3, v2_goes_first)
    with pytest.raises(Exception, match="superseded"):
        step(workflow, "DeidentifyHeader", item_v1)
    reports = workflow.run_pipe()  # v2, sent again by v1's publish

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
    published_v1 = published_by_hand(workflow, dicom_bytes(first))
    workflow.drop("p/img.dcm", dicom_bytes(corrected))
    workflow.run_pipe()
    [indexed_v2] = workflow.table_items(workflow.names.index_table)

    late = step(workflow, "IndexHeader", published_v1)

    assert late["indexed"]["current"] is False
    assert workflow.table_items(workflow.names.index_table) == [indexed_v2]
    assert json.loads(indexed_v2["dicom_json"])["00180050"]["Value"] == [7.25]
    assert b"7.25" in next(iter(workflow.research_objects().values()))
    assert workflow.research_objects(prefix="staging/") == {}


def test_an_original_deleted_while_it_was_written_is_taken_back(workflow, corpus):
    from deidflow.cloud.handler import current_services

    item = expanded_by_hand(workflow, dicom_bytes(corpus.instances[0].dataset))

    def deleted_meanwhile():
        workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=workflow.names.ingest_prefix + "p/img.dcm")

    on_research_write(current_services().s3, deleted_meanwhile)
    with pytest.raises(Exception, match="missing"):
        step(workflow, "DeidentifyHeader", item)

    assert workflow.research_objects() == {}
    assert workflow.table_items(workflow.names.index_table) == []


def test_an_object_whose_publish_outlasts_the_retries_is_never_indexed_before_it_is_published(workflow, corpus):
    """The index comes after the publish: S3 failing the write through all its retries parks the
    object with no index item naming an object that is not in the bucket; the redrive publishes it."""
    from botocore.exceptions import ClientError
    from deidflow.cloud.handler import current_services

    s3 = current_services().s3
    real_put = s3.put_object
    seen = []

    def slow_down(**kwargs):
        if kwargs["Key"].startswith("studies/") and len(seen) < 6:  # the first call and its five retries
            seen.append(workflow.table_items(workflow.names.index_table))
            answer = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}
            raise ClientError(answer, "PutObject")
        return real_put(**kwargs)

    s3.put_object = slow_down
    key = workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    reports = workflow.run_pipe()

    assert [r.status for r in reports] == ["SUCCEEDED", "SUCCEEDED"]
    assert seen == [[]] * 6  # never an index item while the object was not published
    [item] = workflow.table_items(workflow.names.index_table)
    assert list(workflow.research_objects()) == [item["research_key"]]
    version = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket, Prefix=key)["Versions"][0]
    assert status_of(workflow, key, version["VersionId"])["status"] == "published"


# -- deletes after publishing (OnSourceDelete) ------------------------------------------------------


def versions_of(workflow, key: str) -> list[dict]:
    """The key's versions in the ingest bucket, newest first."""
    listed = workflow.s3.list_object_versions(Bucket=workflow.names.ingest_bucket, Prefix=key)
    return [v for v in listed.get("Versions", []) if v["Key"] == key]


def research_versions(workflow) -> list[str]:
    """Every version and delete marker left under studies/ and headers/ (a plain delete hides content, keeps it)."""
    found = []
    for prefix in ("studies/", "headers/"):
        listed = workflow.s3.list_object_versions(Bucket=workflow.names.research_bucket, Prefix=prefix)
        found += [v["Key"] for kind in ("Versions", "DeleteMarkers") for v in listed.get(kind, [])]
    return found


def outcomes(reports) -> list[tuple[str, str | None]]:
    return [(o.status, o.detail) for r in reports for o in r.objects]


def published(workflow, data: bytes, relative_key: str = "p/img.dcm") -> tuple[str, str]:
    """`data` dropped and run through: its key and its version."""
    key = workflow.drop(relative_key, data)
    assert outcomes(workflow.run_pipe())[-1][0] == "published"
    return key, versions_of(workflow, key)[0]["VersionId"]


def metric_names(workflow) -> set[str]:
    return {m["Name"] for doc in workflow.metrics for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}


def test_an_original_deleted_after_publishing_is_withdrawn_from_research(workflow, corpus):
    """OnSourceDelete remove (the default): the delete marker's event takes the instance out: the
    research object with every version, its index item, its catalog rows; its claim is let go, the
    published version's status says `withdrawn`."""
    from tests.workflow.endstate import Dropped, end_state

    data = dicom_bytes(corpus.instances[0].dataset)
    key, version = published(workflow, data)
    assert workflow.research_objects() and workflow.table_items(workflow.names.catalog_table)

    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)
    reports = workflow.run_pipe()

    assert outcomes(reports) == [("withdrawn", None)]
    assert workflow.research_objects() == {} and research_versions(workflow) == []
    assert workflow.table_items(workflow.names.index_table) == []
    assert workflow.table_items(workflow.names.catalog_table) == []
    status = status_of(workflow, key, version)
    assert status["status"] == "withdrawn" and status["research_key"].startswith("studies/")
    assert end_state(workflow, [Dropped(key, data, withdrawn=True)], reports).problems == []
    assert "ObjectsWithdrawn" in metric_names(workflow)


@pytest.fixture
def keeping_workflow():
    """The local stack deployed with OnSourceDelete=keep."""
    from deidflow.local.workflow import LocalWorkflow

    from tests.conftest import REPO, TEST_KEY

    with LocalWorkflow(TEST_KEY, project=REPO, text_detector="local", on_source_delete="keep") as wf:
        yield wf


def test_with_on_source_delete_keep_the_instance_stays_and_its_index_item_is_marked(keeping_workflow, corpus):
    workflow = keeping_workflow
    assert workflow.stack.environment("WithdrawSourceFunction")["ON_SOURCE_DELETE"] == "keep"
    key, version = published(workflow, dicom_bytes(corpus.instances[0].dataset))
    research = workflow.research_objects()
    [indexed] = workflow.table_items(workflow.names.index_table)
    catalog = workflow.table_items(workflow.names.catalog_table)

    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)
    reports = workflow.run_pipe()

    assert outcomes(reports) == [("source_deleted", None)]
    assert workflow.research_objects() == research
    [marked] = workflow.table_items(workflow.names.index_table)
    assert marked.pop("source_deleted") and marked == indexed
    assert workflow.table_items(workflow.names.catalog_table) == catalog
    status = status_of(workflow, key, version)
    assert status["status"] == "source_deleted" and status["research_key"] == indexed["research_key"]
    claim = next(i for i in workflow.table_items(workflow.names.status_table) if i["object_ref"].startswith("sop:"))
    assert claim["holder"] == workflow.object_ref(key)  # still what research shows
    assert "ObjectsMarkedSourceDeleted" in metric_names(workflow)


def test_deleting_an_old_noncurrent_version_withdraws_nothing(workflow, corpus):
    """v1 published, then a corrected v2; v1 deleted for good (a version delete): the key still
    has its current content, so research keeps v2's, and nothing is sent again."""
    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.SliceThickness = "7.25"
    key, v1 = published(workflow, dicom_bytes(first))
    key, v2 = published(workflow, dicom_bytes(corrected))
    research = workflow.research_objects()
    index = workflow.table_items(workflow.names.index_table)

    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key, VersionId=v1)
    reports = workflow.run_pipe()

    assert outcomes(reports) == [("skipped", "live_version")]
    assert workflow.research_objects() == research and b"7.25" in next(iter(research.values()))
    assert workflow.table_items(workflow.names.index_table) == index
    assert status_of(workflow, key, v2)["status"] == "published"
    assert "ObjectsWithdrawn" not in metric_names(workflow)


def test_deleting_the_published_version_for_good_brings_the_one_before_back(workflow, corpus):
    """v2 (published) deleted by its version id: v1 is the key's content again, and research
    shows it once v1 has been through the queue again."""
    first = corpus.instances[0].dataset
    corrected = copy.deepcopy(first)
    corrected.SliceThickness = "7.25"
    key, v1 = published(workflow, dicom_bytes(first))
    _, v2 = published(workflow, dicom_bytes(corrected))

    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key, VersionId=v2)
    reports = workflow.run_pipe()

    assert outcomes(reports)[0] == ("skipped", "live_version") and outcomes(reports)[1][0] == "published"
    [(research_key, data)] = workflow.research_objects().items()
    assert b"7.25" not in data
    [item] = workflow.table_items(workflow.names.index_table)
    assert item["research_key"] == research_key
    assert json.loads(item["dicom_json"])["00180050"]["Value"] != [7.25]
    assert status_of(workflow, key, v1)["status"] == "published"


def test_an_original_deleted_then_uploaded_again_is_published_again(workflow, corpus):
    from tests.workflow.endstate import Dropped, end_state

    data = dicom_bytes(corpus.instances[0].dataset)
    key, v1 = published(workflow, data)
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)
    assert outcomes(workflow.run_pipe()) == [("withdrawn", None)]

    workflow.drop("p/img.dcm", data)
    reports = workflow.run_pipe()

    assert [status for status, _ in outcomes(reports)] == ["published"]
    assert len(workflow.research_objects()) == 1 and len(workflow.table_items(workflow.names.index_table)) == 1
    assert end_state(workflow, [Dropped(key, data)], reports).problems == []
    assert status_of(workflow, key, v1)["status"] == "withdrawn"


def test_an_original_moved_to_another_key_is_published_from_there(workflow, corpus):
    """Deleted here, uploaded there: the withdrawal let the claim go, so the new key publishes the
    instance as its own (not as a duplicate of a deleted original)."""
    from tests.workflow.endstate import Dropped, end_state

    data = dicom_bytes(corpus.instances[0].dataset)
    old_key, _ = published(workflow, data)
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=old_key)
    first = workflow.run_pipe()
    new_key = workflow.drop("q/img.dcm", data)
    reports = workflow.run_pipe()

    assert [status for status, _ in outcomes(reports)] == ["published"]
    dropped = [Dropped(old_key, data, withdrawn=True), Dropped(new_key, data)]
    assert end_state(workflow, dropped, first + reports).problems == []


def test_an_undeleted_original_is_published_again(workflow, corpus):
    """The delete marker removed again (S3's undelete) after the withdrawal: the version is the
    key's content again, and goes through the queue again."""
    from tests.workflow.endstate import Dropped, end_state

    data = dicom_bytes(corpus.instances[0].dataset)
    key, version = published(workflow, data)
    marker = workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)["VersionId"]
    assert outcomes(workflow.run_pipe()) == [("withdrawn", None)]

    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key, VersionId=marker)
    reports = workflow.run_pipe()

    assert [status for status, _ in outcomes(reports)] == ["skipped", "published"]
    assert status_of(workflow, key, version)["status"] == "published"
    assert end_state(workflow, [Dropped(key, data)], reports).problems == []


def test_a_withdrawal_racing_a_newer_upload_never_takes_the_newer_publish_out(workflow, corpus):
    """The delete's WithdrawSource reads the claim and sees the delete marker on top; a new upload
    of the key is published (not yet indexed) before it acts: the claim no longer names the
    deleted version, so the new research object stays, and its IndexHeader indexes it."""
    from deidflow.cloud.handler import current_services

    first = corpus.instances[0].dataset
    again = copy.deepcopy(first)
    again.SliceThickness = "7.25"
    key, _ = published(workflow, dicom_bytes(first))
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)
    [item] = step(workflow, "ExpandBatch", [pop_message(workflow)])["objects"]
    assert item["source"]["action"] == "withdraw"
    s3 = current_services().s3
    real_listing = s3.list_object_versions
    newer = []

    def uploaded_meanwhile(**kwargs):
        s3.list_object_versions = real_listing
        listed = real_listing(**kwargs)
        newer.append(published_by_hand(workflow, dicom_bytes(again)))
        return listed

    s3.list_object_versions = uploaded_meanwhile
    out = step(workflow, "WithdrawSource", item)
    step(workflow, "IndexHeader", newer[0])

    assert (out["status"], out["reason"]) == ("skipped", "superseded")
    [(research_key, data)] = workflow.research_objects().items()
    assert b"7.25" in data
    [indexed] = workflow.table_items(workflow.names.index_table)
    assert indexed["research_key"] == research_key
    assert status_of(workflow, key, versions_of(workflow, key)[0]["VersionId"])["status"] == "published"


def test_a_withdrawal_waits_for_the_index_item_of_a_version_published_a_moment_ago(workflow, corpus):
    """Deleted between the publish and IndexHeader: WithdrawSource waits (TransientError: retried)
    rather than withdraw before the index item it would then leave behind is written."""
    from deidflow.cloud.errors import TransientError

    published_now = published_by_hand(workflow, dicom_bytes(corpus.instances[0].dataset))
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=workflow.key_of(published_now["source"]))
    [item] = step(workflow, "ExpandBatch", [pop_message(workflow)])["objects"]
    with pytest.raises(TransientError, match="not indexed yet"):
        step(workflow, "WithdrawSource", item)
    step(workflow, "IndexHeader", published_now)

    assert step(workflow, "WithdrawSource", item)["status"] == "withdrawn"
    assert workflow.research_objects() == {} and workflow.table_items(workflow.names.index_table) == []


def test_a_withdrawal_that_failed_half_way_holds_the_claim_until_its_retry_ends(workflow, corpus):
    """WithdrawSource fails after it took the claim (S3 down while deleting): the instance is half
    taken out, so an upload of it meanwhile is told to come back later (TransientError), not let
    publish into it; the retry ends the withdrawal, and the upload then publishes."""
    from botocore.exceptions import ClientError
    from deidflow.cloud.errors import TransientError
    from deidflow.cloud.handler import current_services

    data = dicom_bytes(corpus.instances[0].dataset)
    key, _ = published(workflow, data)
    workflow.s3.delete_object(Bucket=workflow.names.ingest_bucket, Key=key)
    [item] = step(workflow, "ExpandBatch", [pop_message(workflow)])["objects"]
    s3 = current_services().s3
    real_delete = s3.delete_object

    def unavailable(**kwargs):
        raise ClientError({"Error": {"Code": "ServiceUnavailable"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "X")

    s3.delete_object = unavailable
    with pytest.raises(TransientError):
        step(workflow, "WithdrawSource", item)
    s3.delete_object = real_delete
    workflow.drop("p/img.dcm", data)
    [upload] = step(workflow, "ExpandBatch", [pop_message(workflow)])["objects"]
    with pytest.raises(TransientError, match="withdrawn"):
        step(workflow, "DeidentifyHeader", upload)

    assert step(workflow, "WithdrawSource", item)["status"] == "withdrawn"  # the retry
    assert workflow.research_objects() == {} and research_versions(workflow) == []
    step(workflow, "IndexHeader", step(workflow, "DeidentifyHeader", upload))
    assert len(workflow.research_objects()) == 1 and len(workflow.table_items(workflow.names.index_table)) == 1
