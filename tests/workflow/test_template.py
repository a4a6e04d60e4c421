"""What template.yaml promises a hospital's security review, checked on the template itself.

cfn-lint and checkov run in `make check-templates`; these are the deidflow-specific promises they
cannot know about.
"""

from __future__ import annotations

import json

from deidflow.local.workflow import FUNCTIONS

from tests.workflow.conftest import of_type, roles, statements


def test_data_buckets_are_kms_encrypted_versioned_private_and_tls_only(resources):
    policies = {r["Properties"]["Bucket"]["Ref"]: r for r in of_type(resources, "AWS::S3::BucketPolicy").values()}
    # Not the access logs (S3 delivers only to SSE-S3) nor the portal's static code (read by
    # CloudFront; tests/workflow/test_template_jobs.py).
    buckets = set(of_type(resources, "AWS::S3::Bucket")) - {"AccessLogBucket", "PortalBucket"}
    assert buckets == {"IngestBucket", "ResearchBucket", "AuditBucket", "AccessConfigBucket", "ExportsBucket"}
    for name in sorted(buckets):
        key = "DataKey" if name == "IngestBucket" else "ResearchKey"  # the PHI side is the ingest bucket
        props = resources[name]["Properties"]
        assert props["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}, name
        [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
        assert rule["ServerSideEncryptionByDefault"]["KMSMasterKeyID"] == {"Fn::GetAtt": [key, "Arn"]}
        assert props["VersioningConfiguration"]["Status"] == "Enabled"
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert resources[name]["DeletionPolicy"] == "Retain"
        deny = policies[name]["Properties"]["PolicyDocument"]["Statement"][0]
        assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_staging_expires_and_the_research_layout_is_the_published_one(resources):
    rules = resources["ResearchBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    staging = next(r for r in rules if r["Id"] == "expire-staging")
    assert staging["Prefix"] == "staging/" and staging["ExpirationInDays"] == {"Ref": "StagingExpirationDays"}


def test_queues_tables_and_logs_are_encrypted_and_recoverable(resources):
    for queue in of_type(resources, "AWS::SQS::Queue").values():
        assert queue["Properties"]["KmsMasterKeyId"] == {"Ref": "DataKey"}
    assert resources["IngestQueue"]["Properties"]["RedrivePolicy"]["deadLetterTargetArn"] == {
        "Fn::GetAtt": ["IngestDeadLetterQueue", "Arn"]
    }
    for name, table in of_type(resources, "AWS::DynamoDB::Table").items():
        props = table["Properties"]
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True, name
        assert props["SSESpecification"]["SSEType"] == "KMS", name
    assert resources["MappingTable"]["Properties"]["SSESpecification"]["KMSMasterKeyId"] == {"Ref": "MappingKey"}
    # The pipeline's logs (its functions, the state machine, the Pipe) are PHI side; the research
    # side's own logs are under ResearchKey (tests/workflow/test_template_research.py).
    substitutions = resources["DeidentifyStateMachine"]["Properties"]["DefinitionSubstitutions"]
    steps = [arn["Fn::GetAtt"][0] for arn in substitutions.values() if "Fn::GetAtt" in arn]
    steps.append(resources["IngestPipe"]["Properties"]["Enrichment"]["Fn::GetAtt"][0])  # ExpandBatch
    # The backfill lists and seals ingest keys: PHI side too.
    backfill = resources["BackfillStateMachine"]["Properties"]["DefinitionSubstitutions"]
    steps += [arn["Fn::GetAtt"][0] for arn in backfill.values() if "Fn::GetAtt" in arn]
    machines = {"StateMachineLogGroup", "LongLaneLogGroup", "PipeLogGroup", "BackfillStateMachineLogGroup"}
    pipeline = machines | {resources[step]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] for step in steps}
    assert len(pipeline) == len(machines) + len(steps) == len(machines) + len(FUNCTIONS)
    for name, log_group in of_type(resources, "AWS::Logs::LogGroup").items():
        expected = "DataKey" if name in pipeline else "ResearchKey"
        assert log_group["Properties"]["KmsKeyId"] == {"Fn::GetAtt": [expected, "Arn"]}, name


def test_only_the_honest_broker_can_read_the_mapping(resources):
    readers = []
    for name, resource in roles(resources).items():
        for statement in statements(resource):
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            touches_mapping = "MappingTable" in json.dumps(statement.get("Resource"))
            if touches_mapping and any(a.startswith("dynamodb:") and a != "dynamodb:PutItem" for a in actions):
                readers.append(name)
    assert readers == ["HonestBrokerRole"]


def test_the_pseudonymisation_key_is_a_generated_secret_under_its_own_key(resources):
    secret = resources["PseudonymKeySecret"]
    assert secret["Properties"]["KmsKeyId"] == {"Ref": "MappingKey"}
    assert secret["Properties"]["GenerateSecretString"] == {"PasswordLength": 64, "ExcludePunctuation": True}
    assert secret["DeletionPolicy"] == "Retain"


def test_the_object_reference_key_is_a_generated_phi_side_secret_read_by_the_functions_that_log_status(resources):
    secret = resources["ObjectRefKeySecret"]
    assert secret["Properties"]["KmsKeyId"] == {"Ref": "DataKey"}
    assert secret["Properties"]["GenerateSecretString"] == {"PasswordLength": 64, "ExcludePunctuation": True}
    assert secret["DeletionPolicy"] == "Retain"
    readers = {"ref": set(), "pseudonym": set()}
    for name, resource in roles(resources).items():
        for statement in statements(resource):
            if "secretsmanager:GetSecretValue" in json.dumps(statement.get("Action")):
                granted = json.dumps(statement.get("Resource"))
                if "ObjectRefKeySecret" in granted:
                    readers["ref"].add(name)
                if "PseudonymKeySecret" in granted:
                    readers["pseudonym"].add(name)
    # IndexHeader (research side) gets the reference in its payload, never a key.
    assert readers["ref"] == {
        "ExpandBatchFunction",
        "DeidentifyHeaderFunction",
        "RedactBurnedInTextFunction",
        "PublishFunction",
        "QuarantineFunction",
        "ParkFunction",
        "WithdrawSourceFunction",
        "BackfillFunction",  # seals an archive's keys and computes their references before the Map sees them
    }
    # The honest broker too: the pseudonyms a known patient gets (tests/workflow/test_template_privilege.py).
    assert readers["pseudonym"] == {"DeidentifyHeaderFunction", "RedactBurnedInTextFunction", "HonestBrokerRole"}


def test_functions_are_arm64_python_traced_and_the_workflow_logs_and_traces(template):
    function_globals = template["Globals"]["Function"]
    assert function_globals["Architectures"] == ["arm64"]
    assert function_globals["Runtime"] == "python3.12"
    assert function_globals["Tracing"] == "Active"
    machine = template["Resources"]["DeidentifyStateMachine"]["Properties"]
    assert machine["Tracing"] == {"Enabled": True}
    assert machine["Logging"]["Level"] == "ALL"
    assert machine["Logging"]["IncludeExecutionData"] is False  # payloads carry S3 keys (PHI)
    pipe_log = template["Resources"]["IngestPipe"]["Properties"]["LogConfiguration"]
    assert "IncludeExecutionData" not in pipe_log  # nor does the Pipe log the messages (S3 keys)
    assert machine["Type"] == {"Ref": "WorkflowType"}
    assert template["Parameters"]["WorkflowType"]["AllowedValues"] == ["EXPRESS", "STANDARD"]


def test_alarms_watch_the_dead_letter_queue_failed_executions_and_the_quarantine_rate(resources):
    alarms = of_type(resources, "AWS::CloudWatch::Alarm")
    assert set(alarms) == {"DeadLetterQueueAlarm", "FailedExecutionsAlarm", "QuarantineRateAlarm"}
    rate = json.dumps(alarms["QuarantineRateAlarm"]["Properties"]["Metrics"])
    assert "ObjectsQuarantined" in rate and "ObjectsPublished" in rate
    for alarm in alarms.values():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}]
