"""The deploy rehearsal (deidflow.local.stack): template.yaml packaged, translated by the SAM
translator and created as a stack on moto's CloudFormation, and the local workflow on that stack.

The mutation tests write a changed template.yaml beside links to the real functions/,
statemachines/, layers/ and orthanc/ in tmp_path; the real template is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from deidflow.local.stack import (
    RehearsalError,
    conditions,
    modelled_types,
    parameter_values,
    prepare,
    rehearse,
)
from deidflow.local.workflow import LocalWorkflow
from deidflow.testing.synthetic import make_corpus

from tests.conftest import REPO, TEST_KEY, dicom_bytes

_AWS = {"AWS_DEFAULT_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


@pytest.fixture
def aws(monkeypatch):
    from moto import mock_aws

    for name, value in _AWS.items():
        monkeypatch.setenv(name, value)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        yield


def mutated_project(tmp_path: Path, old: str, new: str) -> Path:
    """A project whose template.yaml has `old` replaced by `new` (which must be there, once)."""
    text = (REPO / "template.yaml").read_text(encoding="utf-8")
    assert text.count(old) == 1, f"the template no longer has {old!r}: update this test"
    for folder in ("functions", "statemachines", "layers", "orthanc"):
        (tmp_path / folder).symlink_to(REPO / folder)
    (tmp_path / "template.yaml").write_text(text.replace(old, new), encoding="utf-8")
    return tmp_path


def present(translated: dict, section: str) -> dict:
    """The resources (or outputs) of the translated template whose conditions hold locally."""
    holds = conditions(translated, parameter_values(translated, {}))
    return {
        name: item
        for name, item in translated.get(section, {}).items()
        if "Condition" not in item or holds[item["Condition"]]
    }


def test_the_stack_has_every_resource_and_output_the_translated_template_declares(aws):
    import boto3

    plan = prepare(REPO)
    stack = rehearse(REPO)
    declared = present(plan.translated, "Resources")
    described = {
        r["LogicalResourceId"]: r
        for r in boto3.client("cloudformation").describe_stack_resources(StackName=stack.name)["StackResources"]
        if "LogicalResourceId" in r
    }

    # Every resource of the translated template is either created by moto's CloudFormation
    # (CREATE_COMPLETE) or stubbed, and a stub is only ever a type moto does not model.
    assert set(stack.resources) == set(declared)
    assert set(described) | set(stack.stubbed) == set(declared)
    assert not set(described) & set(stack.stubbed)
    assert {r["ResourceStatus"] for r in described.values()} == {"CREATE_COMPLETE"}
    assert {stack.types[name] for name in stack.stubbed}.isdisjoint(modelled_types())
    assert {stack.types[name] for name in described} <= modelled_types()
    assert {name: stack.types[name] for name in declared} == {name: r["Type"] for name, r in declared.items()}
    # What the workflow needs is really created, not stubbed.
    for kind in ("AWS::S3::Bucket", "AWS::SQS::Queue", "AWS::DynamoDB::Table", "AWS::Lambda::Function"):
        assert not {n for n in stack.stubbed if stack.types[n] == kind}, kind
    assert {stack.types[n] for n in stack.stubbed} >= {"AWS::Pipes::Pipe", "AWS::SecretsManager::Secret"}

    # Every output is there, with a value (a GetAtt of a skipped resource would fail them all; a
    # Ref moto cannot resolve would show a Python object).
    assert set(stack.outputs) == set(present(plan.translated, "Outputs"))
    assert all(value and "<moto" not in value for value in stack.outputs.values()), stack.outputs
    assert stack.outputs["DeidflowLayerArn"] == "arn:aws:lambda:us-east-1:123456789012:layer:deidflow-local-deidflow:1"
    assert stack.outputs["StateMachineArn"].endswith(":stateMachine:deidflow-local-deidentify")
    print(
        f"rehearsal: {len(declared)} resources ({len(described)} created, {len(stack.stubbed)} stubbed), "
        f"{len(stack.outputs)} outputs; {json.dumps({k: round(v, 2) for k, v in stack.timings.items()})}"
    )


def test_what_moto_leaves_out_is_completed_from_the_template(aws):
    import boto3

    stack = rehearse(REPO)
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    ingest, research, audit = (stack.output(o) for o in ("IngestBucketName", "ResearchBucketName", "AuditBucketName"))

    # The ingest bucket notifies the queue for the drop and Orthanc prefixes, as the template says.
    [*configurations] = s3.get_bucket_notification_configuration(Bucket=ingest)["QueueConfigurations"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=stack.output("IngestQueueUrl"), AttributeNames=["QueueArn"])
    prefixes = {c["Filter"]["Key"]["FilterRules"][0]["Value"] for c in configurations}
    assert prefixes == {"incoming/", "orthanc/"}
    assert {c["QueueArn"] for c in configurations} == {queue_arn["Attributes"]["QueueArn"]}
    for bucket in (ingest, research):
        assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    lock = s3.get_object_lock_configuration(Bucket=audit)["ObjectLockConfiguration"]
    retention = lock["Rule"]["DefaultRetention"]
    assert (lock["ObjectLockEnabled"], retention["Mode"], retention["Days"]) == ("Enabled", "COMPLIANCE", 2190)

    # The queue as the template declares it (moto's own model keeps these).
    attributes = sqs.get_queue_attributes(QueueUrl=stack.output("IngestQueueUrl"), AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "600"
    assert json.loads(attributes["RedrivePolicy"])["maxReceiveCount"] in (5, "5")

    # The state machine executes, with the stack's own function ARNs substituted.
    machine = boto3.client("stepfunctions").describe_state_machine(stateMachineArn=stack.output("StateMachineArn"))
    assert machine["type"] == "EXPRESS"
    definition = machine["definition"]
    assert "${" not in definition
    assert stack.functions["PublishFunction"] in definition

    # The stubbed secrets exist, under the name the functions' environment gives them.
    secret_id = stack.environment("DeidentifyHeaderFunction")["KEY_SECRET_ID"]
    assert secret_id == stack.physical_id("PseudonymKeySecret")
    assert len(boto3.client("secretsmanager").get_secret_value(SecretId=secret_id)["SecretString"]) == 64


def test_the_workflow_uses_the_stacks_names_and_the_functions_environment():
    corpus = make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1, with_sr=False)
    with LocalWorkflow(TEST_KEY, project=REPO, text_detector="local", max_object_mb=64) as workflow:
        stack = workflow.stack
        assert workflow.names.ingest_bucket == stack.output("IngestBucketName")
        assert workflow.names.research_bucket == stack.output("ResearchBucketName")
        assert workflow.names.index_table == stack.output("IndexTableName") == os.environ["INDEX_TABLE"]
        assert workflow.state_machine_arn == stack.output("StateMachineArn")
        function_env = stack.environment("IndexHeaderFunction")
        assert function_env["MAX_OBJECT_MB"] == "64"  # the MaxObjectMB parameter, through the template
        for name in ("RESEARCH_BUCKET", "CATALOG_TABLE", "STATUS_TABLE", "KEY_SECRET_ID", "STAGING_PREFIX"):
            assert os.environ[name] == function_env[name]
        workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
        [report] = workflow.run_pipe()
        assert [o.status for o in report.objects] == ["published"]
        [key] = workflow.research_objects()
        [indexed] = workflow.table_items(stack.output("IndexTableName"))
        assert indexed["research_key"] == key


def test_a_function_environment_naming_a_table_that_does_not_exist_fails_the_rehearsal(tmp_path):
    project = mutated_project(tmp_path, "INDEX_TABLE: !Ref IndexTable", "INDEX_TABLE: !Ref IndexTabel")
    with pytest.raises(RehearsalError) as raised:
        prepare(project)
    message = str(raised.value)
    assert "Unresolved resource dependencies [IndexTabel]" in message
    assert "Resources.ExpandBatchFunction.Properties.Environment.Variables.INDEX_TABLE" in message


def test_a_renamed_output_breaks_the_local_run(tmp_path, monkeypatch):
    project = mutated_project(tmp_path, "  IngestBucketName:\n", "  IngestBucket:\n")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "before")
    with (
        pytest.raises(RehearsalError, match="the stack has no output IngestBucketName"),
        LocalWorkflow(TEST_KEY, project=project),
    ):
        pass
    # A run that failed to start leaves the environment as it found it.
    assert os.environ["AWS_ACCESS_KEY_ID"] == "before"


def test_an_ingest_bucket_that_does_not_notify_the_drop_prefix_processes_nothing(tmp_path):
    """The runner drops under the DropPrefix output; the bucket notifies what the template says."""
    # The uploads' notification of the drop prefix (its deletes' stays: they withdraw nothing here).
    created = (
        "- Event: s3:ObjectCreated:*\n            Queue: !GetAtt IngestQueue.Arn\n"
        "            Filter:\n              S3Key:\n"
    )
    project = mutated_project(
        tmp_path,
        created + "                Rules: [{ Name: prefix, Value: !Ref DropPrefix }]",
        created + "                Rules: [{ Name: prefix, Value: elsewhere/ }]",
    )
    corpus = make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1, with_sr=False)
    with LocalWorkflow(TEST_KEY, project=project, text_detector="none") as workflow:
        workflow.drop("p/img.dcm", dicom_bytes(corpus.instances[0].dataset))
        assert workflow.run_pipe() == []
        assert workflow.research_objects() == {}


def test_a_code_uri_that_does_not_exist_fails_packaging(tmp_path):
    project = mutated_project(tmp_path, "CodeUri: functions/publish/", "CodeUri: functions/publisher/")
    with pytest.raises(RehearsalError, match=r"PublishFunction.CodeUri: no folder functions/publisher/"):
        prepare(project)
