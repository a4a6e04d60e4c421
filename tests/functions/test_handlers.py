"""Each Lambda handler (functions/<step>/app.py) against moto: what it reads, writes and returns."""

from __future__ import annotations

import io
import json

import numpy as np
import pydicom
import pytest
from deidflow.cloud.errors import ProcessingError, RejectedObject, TransientError, classify
from deidflow.local.workflow import LambdaContext
from deidflow.testing.synthetic import make_burned_in_ultrasound, make_corpus

from tests.conftest import REPO, dicom_bytes


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(n_patients=2, studies_per_patient=1, images_per_series=2, with_sr=True)


def s3_message(bucket: str, key: str, *, event: str = "ObjectCreated:Put", size: int = 10, message_id: str = "m1"):
    """An SQS message as the Pipe delivers it, carrying an S3 notification (keys URL-encoded)."""
    from urllib.parse import quote_plus

    record = {
        "eventName": event,
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/"), "size": size}},
    }
    return {"messageId": message_id, "body": json.dumps({"Records": [record]}), "eventSource": "aws:sqs"}


def call(workflow, step: str, event):
    return workflow.handlers[step](event, LambdaContext(workflow.function_arn(step)))


def source(workflow, key: str) -> dict:
    bucket = workflow.names.ingest_bucket
    ref = workflow.object_ref(key)
    return {
        "source": {
            "bucket": bucket,
            "key": key,
            "version_id": None,
            "size": None,
            "ref": ref,
            "lane": "express",
            "action": "deidentify",
        }
    }


def opened(workflow, out: dict) -> dict:
    """A step's answer with its source's key opened, in the shape `source()` makes by hand."""
    plain = {k: v for k, v in out["source"].items() if k not in ("sealed_key", "budget")}
    return {**out, "source": {**plain, "key": workflow.key_of(out["source"])}}


def status_of(workflow, key: str) -> dict:
    items = workflow.table_items(workflow.names.status_table)
    return next(i for i in items if i["object_ref"] == workflow.object_ref(key))


# -- expand_batch -----------------------------------------------------------------------------------


def test_expand_batch_keeps_instances_and_records_what_it_skips(workflow):
    bucket = workflow.names.ingest_bucket
    messages = [
        s3_message(bucket, "incoming/study one/img 1.dcm", message_id="a"),
        s3_message(bucket, "incoming/study one/img 1.dcm", message_id="a-again"),  # duplicate delivery
        s3_message(bucket, "orthanc/8a1c.json", message_id="b"),
        s3_message(bucket, "orthanc/8a1c.dcm.head", message_id="b2"),
        s3_message(bucket, "incoming/folder/", size=0, message_id="c"),
        s3_message(bucket, "incoming/gone.dcm", event="ObjectRemoved:DeleteMarkerCreated", message_id="d"),
        s3_message(bucket, "orthanc/8a1c.json", event="ObjectRemoved:Delete", message_id="d2"),
        s3_message(bucket, "incoming/old.dcm", event="ObjectRestore:Completed", message_id="d3"),
        {"messageId": "e", "body": json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})},
        {"messageId": "f", "body": "not json"},
    ]
    out = call(workflow, "ExpandBatch", messages)
    # A delete is an object too: one to withdraw (the state machine's Choice reads the action).
    assert [(workflow.key_of(o["source"]), o["source"]["action"]) for o in out["objects"]] == [
        ("incoming/study one/img 1.dcm", "deidentify"),
        ("incoming/gone.dcm", "withdraw"),
    ]
    reasons = {s["message_id"]: s["reason"] for s in out["skipped"]}
    assert reasons == {
        "b": "not_an_instance",
        "b2": "not_an_instance",
        "c": "folder",
        "d2": "not_an_instance",
        "d3": "not_object_created",
        "e": "s3_test_event",
        "f": "unreadable_message",
    }
    assert status_of(workflow, "orthanc/8a1c.json")["status"] == "skipped"
    assert status_of(workflow, "orthanc/8a1c.json")["reason"] == "not_an_instance"


# -- deidentify_header ------------------------------------------------------------------------------


def test_deidentify_header_publishes_a_clean_copy_and_writes_the_mapping(workflow, corpus):
    """What needs no pixel scan the header step publishes itself: one write, to the research key
    (no staging copy for Publish to copy), recorded published."""
    instance = corpus.instances[0]
    key = workflow.drop("p0/img.dcm", dicom_bytes(instance.dataset))
    out = call(workflow, "DeidentifyHeader", source(workflow, key))

    assert out["needs_pixel_scan"] is False
    staged = out["staged"]
    assert "staging_key" not in staged and workflow.research_objects(prefix="staging/") == {}
    assert out["status"] == "published" and out["research_key"] == staged["research_key"]
    data = workflow.s3.get_object(
        Bucket=workflow.names.research_bucket, Key=staged["research_key"], VersionId=out["published"]["version_id"]
    )["Body"].read()
    for value in corpus.planted_values():
        assert value.encode() not in data
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.SOPInstanceUID == staged["sop_instance_uid"] != instance.dataset.SOPInstanceUID

    mapping = workflow.table_items(workflow.names.mapping_table)
    assert len(mapping) == 1
    assert mapping[0]["sop_instance_uid"] == ds.SOPInstanceUID
    assert mapping[0]["original_sop_instance_uid"] == instance.dataset.SOPInstanceUID
    assert mapping[0]["original_patient_id"] == instance.patient.patient_id
    assert mapping[0]["patient_id"] == ds.PatientID != instance.patient.patient_id
    assert status_of(workflow, key)["status"] == "published"
    assert workflow.table_items(workflow.names.index_table) == []  # not yet: IndexHeader comes after
    # The original is untouched.
    original = workflow.s3.get_object(Bucket=workflow.names.ingest_bucket, Key=key)["Body"].read()
    assert original == dicom_bytes(instance.dataset)


def test_deidentify_header_is_idempotent(workflow, corpus):
    """The same output again, byte for byte, under the same publish generation (one version, one
    generation): a redelivered event writes what the first run wrote."""
    key = workflow.drop("p0/img.dcm", dicom_bytes(corpus.instances[1].dataset))
    first = call(workflow, "DeidentifyHeader", source(workflow, key))
    bucket = workflow.names.research_bucket
    second = call(workflow, "DeidentifyHeader", source(workflow, key))

    def without_version(out):
        return {**opened(workflow, out), "published": {k: v for k, v in out["published"].items() if k != "version_id"}}

    assert without_version(second) == without_version(first) and first["published"]["generation"] == 1
    contents = {
        workflow.s3.get_object(Bucket=bucket, Key=out["research_key"], VersionId=out["published"]["version_id"])[
            "Body"
        ].read()
        for out in (first, second)
    }
    assert len(contents) == 1


def test_two_runs_of_one_object_at_once_both_publish_and_neither_says_missing(workflow, corpus):
    """A redelivered event or a study sent twice: two runs of one object interleave, publishing
    both, then indexing both. The research object is the same bytes, both index writes count
    (one version, one generation), the status says published, and nothing is left in staging."""
    key = workflow.drop("p0/img.dcm", dicom_bytes(corpus.instances[1].dataset))
    published = [call(workflow, "DeidentifyHeader", source(workflow, key)) for _ in range(2)]
    indexed = [call(workflow, "IndexHeader", run) for run in published]

    assert [p["status"] for p in published] == ["published", "published"]
    assert [i["indexed"]["current"] for i in indexed] == [True, True]
    research = workflow.research_objects()
    assert list(research) == [published[0]["staged"]["research_key"]]
    assert status_of(workflow, key)["status"] == "published"
    assert workflow.research_objects(prefix="staging/") == {}


def test_an_instance_that_needs_a_scan_is_only_flagged(workflow):
    ds, _, _ = make_burned_in_ultrasound()
    key = workflow.drop("us/frame.dcm", dicom_bytes(ds))
    out = call(workflow, "DeidentifyHeader", source(workflow, key))
    assert opened(workflow, out) == {"source": source(workflow, key)["source"], "needs_pixel_scan": True}
    listed = workflow.s3.list_objects_v2(Bucket=workflow.names.research_bucket).get("KeyCount", 0)
    assert listed == 0


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"", "empty_file"), (b"just some text, not DICOM at all" * 10, "not_dicom")],
)
def test_bad_objects_are_rejected_with_a_reason_and_no_output(workflow, payload, reason):
    key = workflow.drop("junk/file.bin", payload)
    with pytest.raises(RejectedObject) as caught:
        call(workflow, "DeidentifyHeader", source(workflow, key))
    assert caught.value.reason == reason
    assert json.loads(str(caught.value))["reason"] == reason
    assert workflow.s3.list_objects_v2(Bucket=workflow.names.research_bucket).get("KeyCount", 0) == 0


def test_a_truncated_instance_is_rejected(workflow, corpus):
    data = dicom_bytes(corpus.instances[0].dataset)
    key = workflow.drop("p0/cut.dcm", data[: len(data) - 500])
    with pytest.raises(RejectedObject) as caught:
        call(workflow, "DeidentifyHeader", source(workflow, key))
    assert caught.value.reason == "truncated"


def test_too_large_is_rejected_before_reading(workflow, monkeypatch):
    key = workflow.drop("big/file.dcm", b"x" * 100)
    event = source(workflow, key)
    reads = []
    services = __import__("deidflow.cloud.handler", fromlist=["current_services"]).current_services()
    too_many = services.settings.max_object_bytes + 1  # above MAX_OBJECT_MB: never downloaded
    event["source"]["size"] = too_many
    get = services.s3.get_object

    class Unread:  # the GET's body, whose reads are recorded
        def __init__(self, body):
            self.body = body

        def read(self, *args):
            reads.append(args)
            return self.body.read(*args)

        def close(self):
            self.body.close()

    # An event's size alone never rejects (it may be stale or forged): S3's answer to the GET
    # (its first MiB: Content-Range names the whole size) confirms it, before the body is read.
    def too_large(**k):
        answer = get(**k)
        return {**answer, "ContentRange": f"bytes 0-99/{too_many}", "Body": Unread(answer["Body"])}

    monkeypatch.setattr(services.s3, "get_object", too_large)
    with pytest.raises(RejectedObject) as caught:
        call(workflow, "DeidentifyHeader", event)
    assert caught.value.reason == "too_large"
    assert reads == []


def test_an_object_deleted_before_processing_is_rejected_as_missing(workflow):
    with pytest.raises(RejectedObject) as caught:
        call(workflow, "DeidentifyHeader", source(workflow, "incoming/never-was.dcm"))
    assert caught.value.reason == "missing"


def test_unexpected_failures_are_processing_errors_without_values(workflow, corpus, monkeypatch):
    key = workflow.drop("p0/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    monkeypatch.setenv("MAPPING_TABLE", "no-such-table")
    from deidflow.cloud.handler import reset_services

    reset_services()
    with pytest.raises(ProcessingError) as caught:
        call(workflow, "DeidentifyHeader", source(workflow, key))
    assert "ResourceNotFoundException" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_throttling_is_transient_and_everything_else_is_not():
    from botocore.exceptions import ClientError, EndpointConnectionError
    from deidflow.intake import Rejected

    def client_error(code: str, status: int = 400) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutItem")

    assert isinstance(classify(client_error("ThrottlingException")), TransientError)
    assert isinstance(classify(client_error("ProvisionedThroughputExceededException")), TransientError)
    assert isinstance(classify(client_error("Anything", 503)), TransientError)
    assert isinstance(classify(EndpointConnectionError(endpoint_url="https://s3")), TransientError)
    assert isinstance(classify(client_error("AccessDenied", 403)), ProcessingError)
    assert classify(client_error("NoSuchKey", 404)).reason == "missing"
    assert classify(Rejected("not_dicom", "no preamble")).reason == "not_dicom"
    assert str(classify(ValueError("PatientName=DOE^JANE"))) == "ValueError"


# -- redact_burned_in_text --------------------------------------------------------------------------


def test_redact_burned_in_text_fills_the_text_and_cleans_the_header(workflow):
    ds, _, planted = make_burned_in_ultrasound()
    key = workflow.drop("us/frame.dcm", dicom_bytes(ds))
    out = call(workflow, "RedactBurnedInText", source(workflow, key))

    assert out["needs_pixel_scan"] is True
    assert out["pixels"]["redacted"] is True and out["pixels"]["boxes"] >= 2
    data = workflow.s3.get_object(Bucket=workflow.names.research_bucket, Key=out["staged"]["staging_key"])[
        "Body"
    ].read()
    for value in planted:
        assert value.encode() not in data
    cleaned = pydicom.dcmread(io.BytesIO(data))
    assert cleaned.BurnedInAnnotation == "NO"
    assert "113101" in {item.CodeValue for item in cleaned.DeidentificationMethodCodeSequence}
    # The background is at most 60; the drawn text was 255. No text pixel is left.
    assert int(np.asarray(cleaned.pixel_array).max()) < 128


def test_a_throttled_rekognition_is_transient_never_pixels_failed(workflow, monkeypatch):
    """One throttled DetectText call says nothing about the image: the step fails as transient
    (retried, then parked), not as `pixels_failed` (quarantined); a real refusal stays a rejection."""
    from botocore.stub import Stubber
    from deidflow.cloud.handler import current_services
    from deidflow.cloud.services import make_rekognition_client
    from deidflow.pixels.detectors.rekognition import RekognitionDetector

    rekognition = make_rekognition_client("us-east-1", max_attempts=1)
    services = current_services()
    monkeypatch.setattr(services, "detector", lambda name: RekognitionDetector(rekognition))
    ds, _, _ = make_burned_in_ultrasound()
    key = workflow.drop("us/frame.dcm", dicom_bytes(ds))
    with Stubber(rekognition) as stub:
        stub.add_client_error("detect_text", "ThrottlingException", http_status_code=400)
        with pytest.raises(TransientError, match="ThrottlingException"):
            call(workflow, "RedactBurnedInText", source(workflow, key))
        stub.add_client_error("detect_text", "InternalServerError", http_status_code=500)
        with pytest.raises(TransientError):
            call(workflow, "RedactBurnedInText", source(workflow, key))
        stub.add_client_error("detect_text", "ImageTooLargeException", http_status_code=400)
        with pytest.raises(RejectedObject) as refused:
            call(workflow, "RedactBurnedInText", source(workflow, key))
    assert refused.value.reason == "pixels_failed"
    assert workflow.research_objects(prefix="staging/") == {}


# -- index_header, publish, quarantine --------------------------------------------------------------


def test_publish_then_index(workflow, corpus):
    key = workflow.drop("p0/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    published = call(workflow, "DeidentifyHeader", source(workflow, key))
    staged = published
    research_key = staged["staged"]["research_key"]
    assert published["status"] == "published" and published["research_key"] == research_key
    assert published["published"] == {"generation": 1, "version_id": published["published"]["version_id"]}
    assert list(workflow.research_objects()) == [research_key]
    assert workflow.table_items(workflow.names.index_table) == []  # not yet: IndexHeader comes after
    assert status_of(workflow, key)["status"] == "published"
    assert status_of(workflow, key)["research_key"] == research_key

    indexed = call(workflow, "IndexHeader", published)
    assert indexed == {
        "source": staged["source"],
        "status": "published",
        "research_key": research_key,
        "indexed": {"sidecar": False, "current": True},
    }
    [item] = workflow.table_items(workflow.names.index_table)
    assert item["sop_instance_uid"] == staged["staged"]["sop_instance_uid"]
    assert item["research_key"] == research_key and item["publish_generation"] == 1
    for value in corpus.planted_values():
        assert value not in json.dumps(item, default=str)
    assert workflow.s3.list_objects_v2(Bucket=workflow.names.research_bucket, Prefix="staging/")["KeyCount"] == 0


def test_quarantine_records_the_reason_and_tags_the_original_in_place(workflow):
    key = workflow.drop("junk/readme.txt", b"hello")
    workflow.s3.put_object_tagging(
        Bucket=workflow.names.ingest_bucket, Key=key, Tagging={"TagSet": [{"Key": "site", "Value": "north"}]}
    )
    error = {
        "Error": "RejectedObject",
        "Cause": json.dumps(
            {"errorType": "RejectedObject", "errorMessage": json.dumps({"reason": "not_dicom", "detail": "no DICM"})}
        ),
    }
    out = call(workflow, "Quarantine", {**source(workflow, key), "error": error})
    assert out["status"] == "quarantined" and out["reason"] == "not_dicom"
    record = status_of(workflow, key)
    assert (record["status"], record["reason"], record["detail"]) == ("quarantined", "not_dicom", "no DICM")
    tags = workflow.s3.get_object_tagging(Bucket=workflow.names.ingest_bucket, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {
        "site": "north",
        "deidflow-status": "quarantined",
        "deidflow-reason": "not_dicom",
    }
    assert workflow.s3.get_object(Bucket=workflow.names.ingest_bucket, Key=key)["Body"].read() == b"hello"


def test_an_object_deleted_before_it_was_read_is_skipped_not_quarantined(workflow):
    key = "orthanc/deleted-duplicate.dcm"
    error = {
        "Error": "RejectedObject",
        "Cause": json.dumps({"errorMessage": json.dumps({"reason": "missing", "detail": "NoSuchKey"})}),
    }
    out = call(workflow, "Quarantine", {**source(workflow, key), "error": error})
    assert out["status"] == "skipped" and out["reason"] == "missing"
    assert status_of(workflow, key)["status"] == "skipped"


def test_quarantine_names_timeouts_and_internal_errors():
    from deidflow.cloud.errors import reason_from_error

    assert reason_from_error({"Error": "States.Timeout", "Cause": ""}) == ("step_failed", "States.Timeout")
    internal = {"Error": "ProcessingError", "Cause": json.dumps({"errorMessage": "PutItem: AccessDenied"})}
    assert reason_from_error(internal) == ("internal_error", "PutItem: AccessDenied")


def test_handlers_log_references_and_reasons_never_keys_or_header_values(workflow, corpus, caplog):
    from deidflow.cloud import handler

    handler.logger.setLevel("INFO")
    key = workflow.drop("p0/img.dcm", dicom_bytes(corpus.instances[0].dataset))
    call(workflow, "IndexHeader", call(workflow, "DeidentifyHeader", source(workflow, key)))
    with pytest.raises(RejectedObject):
        call(workflow, "DeidentifyHeader", source(workflow, workflow.drop("p0/bad.dcm", b"\0" * 128 + b"DICM")))
    # Every record with every extra field: what the JSON log line is made of.
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert workflow.object_ref(key) in text  # the object's reference is logged...
    assert "p0/img.dcm" not in text and "p0/bad.dcm" not in text  # ...its key never is...
    for value in corpus.planted_values():
        assert value not in text  # ...nor are header values


def test_xray_records_no_s3_key_because_the_tracer_patches_nothing():
    """A patched botocore records whitelisted request parameters in X-Ray; for S3 those include
    the object key. The tracer keeps the handler's segment and patches no module."""
    from pathlib import Path

    import aws_xray_sdk
    from aws_xray_sdk.core import patcher
    from deidflow.cloud import handler

    whitelist = Path(aws_xray_sdk.__file__).parent / "ext" / "resources" / "aws_para_whitelist.json"
    s3 = json.loads(whitelist.read_text())["services"]["s3"]["operations"]
    assert "Key" in s3["GetObject"]["request_parameters"]  # why botocore must stay unpatched
    assert handler.tracer.auto_patch is False
    assert not {"botocore", "boto3"} & set(patcher._PATCHED_MODULES)


def test_every_function_the_template_deploys_has_an_importable_handler():
    """sam build packages a folder whatever it holds: an app.py that does not import would fail
    only in the cloud, at the first invocation."""
    from deidflow.local.template import load_template
    from deidflow.local.workflow import load_module

    template = load_template(REPO / "template.yaml")
    functions = {
        logical_id: resource["Properties"]["CodeUri"]
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Serverless::Function"
    }
    assert {"ResearchApiFunction", "AuditSealerFunction"} <= set(functions)
    for logical_id, code_uri in functions.items():
        module = load_module(REPO / code_uri / "app.py")
        assert callable(module.handler), logical_id


def test_a_payload_from_before_references_gets_one_computed_where_status_is_written(workflow, corpus):
    """ExpandBatch gives every object its reference; a payload without one (an execution started
    before the upgrade, an old sample event) is given it by the step that writes status."""
    key = workflow.drop("p0/old.dcm", dicom_bytes(corpus.instances[0].dataset))
    event = source(workflow, key)
    del event["source"]["ref"]
    out = call(workflow, "DeidentifyHeader", event)
    assert out["source"]["ref"] == workflow.object_ref(key)
    assert status_of(workflow, key)["status"] == "published"
