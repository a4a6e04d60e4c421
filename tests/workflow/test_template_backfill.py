"""The backfill in template.yaml and statemachines/backfill.asl.json (issue 16): what a security
review and an operator are promised.

Its concurrency is bounded (a parameter with a ceiling, the Map reading it from Plan, the code
capping it again); the Map reads the plan's sealed chunk files, never an S3 listing or inventory
(those hand keys in clear to the child executions); and its roles hold exactly what the steps
need: the function lists the ingest bucket and reads and writes only its own work prefix and the
inventory prefix, never an original's content or anything on the research side.
"""

from __future__ import annotations

import json

from deidflow.cloud.backfill import INVENTORY_PREFIX, MAX_CONCURRENCY, WORK_PREFIX, BackfillSettings

from tests.conftest import REPO
from tests.workflow.conftest import LOG_DELIVERY
from tests.workflow.test_template_jobs import granted_pairs

ASL = json.loads((REPO / "statemachines" / "backfill.asl.json").read_text())
STACK = "arn:aws:states:eu-west-1:111122223333"


def test_the_backfill_map_is_distributed_bounded_and_reads_only_the_plans_chunk_files(template):
    batches = ASL["States"]["Batches"]
    assert batches["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert "MaxConcurrency" not in batches and batches["MaxConcurrencyPath"] == "$.max_concurrency"
    assert "ToleratedFailurePercentage" not in batches and "ToleratedFailureCount" not in batches  # none tolerated
    reader = batches["ItemReader"]
    assert reader["Resource"] == "arn:aws:states:::s3:getObject"  # not s3:listObjectsV2, not a MANIFEST
    assert "InputType" not in reader["ReaderConfig"] or reader["ReaderConfig"]["InputType"] == "JSON"
    assert reader["Parameters"] == {"Bucket.$": "$.chunk_file.bucket", "Key.$": "$.chunk_file.key"}
    # the bound: a parameter with a ceiling, into the function that answers Plan, capped again there
    parameter = template["Parameters"]["BackfillConcurrency"]
    assert 1 <= int(parameter["Default"]) <= int(parameter["MaxValue"]) <= MAX_CONCURRENCY
    environment = template["Resources"]["BackfillFunction"]["Properties"]["Environment"]["Variables"]
    assert environment["BACKFILL_CONCURRENCY"] == {"Ref": "BackfillConcurrency"}
    assert environment["BACKFILL_BATCH_OBJECTS"] == {"Ref": "BatchSize"}  # the deidentify Map's batch
    unbounded = BackfillSettings.from_env({"INGEST_BUCKET": "b", "BACKFILL_CONCURRENCY": "100000"})
    assert unbounded.max_concurrency == MAX_CONCURRENCY
    # each batch goes through the ingest path's own state machine, not a copy of its states
    deidentify = batches["ItemProcessor"]["States"]["Deidentify"]
    assert deidentify["Resource"] == "arn:aws:states:::states:startExecution.sync:2"
    assert deidentify["Parameters"]["StateMachineArn"] == "${DeidentifyStateMachineArn}"
    substitutions = template["Resources"]["BackfillStateMachine"]["Properties"]["DefinitionSubstitutions"]
    assert substitutions["DeidentifyStateMachineArn"] == {"Ref": "DeidentifyStateMachine"}


def test_the_backfill_function_holds_exactly_what_its_steps_need(template):
    ingest = "<IngestBucket.Arn>"
    assert granted_pairs(template, "BackfillFunction") == {
        ("s3:ListBucketVersions", ingest),
        ("s3:ListBucket", ingest),
        ("s3:GetObject", f"{ingest}/{WORK_PREFIX}*"),
        ("s3:PutObject", f"{ingest}/{WORK_PREFIX}*"),
        ("s3:GetObject", f"{ingest}/{INVENTORY_PREFIX}*"),
        ("dynamodb:BatchGetItem", "<StatusTable.Arn>"),
        ("dynamodb:UpdateItem", "<StatusTable.Arn>"),
        ("states:StartExecution", f"{STACK}:stateMachine:deidflow-deidentify-long"),
        ("secretsmanager:GetSecretValue", "<ObjectRefKeySecret>"),
        ("kms:Decrypt", "<DataKey.Arn>"),
        ("kms:GenerateDataKey", "<DataKey.Arn>"),
    }
    [listing] = [
        s
        for p in template["Resources"]["BackfillFunction"]["Properties"]["Policies"]
        for s in p["Statement"]
        if s["Action"] == "s3:ListBucket"
    ]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": f"{WORK_PREFIX}*"}}


def test_the_backfill_state_machine_holds_exactly_what_its_states_need(template):
    pairs = granted_pairs(template, "BackfillStateMachine")
    assert {(a, r) for a, r in pairs if a in LOG_DELIVERY} == {(a, "*") for a in LOG_DELIVERY}
    assert {(a, r) for a, r in pairs if a not in LOG_DELIVERY} == {
        ("lambda:InvokeFunction", "<BackfillFunction.Arn>"),
        ("lambda:InvokeFunction", "<BackfillFunction.Arn>:*"),
        ("s3:GetObject", f"<IngestBucket.Arn>/{WORK_PREFIX}*"),
        ("kms:Decrypt", "<DataKey.Arn>"),
        ("states:StartExecution", f"{STACK}:stateMachine:deidflow-backfill"),
        ("states:StartExecution", "<DeidentifyStateMachine>"),
        ("states:DescribeExecution", f"{STACK}:execution:deidflow-deidentify:*"),
        ("states:DescribeExecution", f"{STACK}:express:deidflow-deidentify:*"),
        ("states:StopExecution", f"{STACK}:execution:deidflow-deidentify:*"),
        ("states:StopExecution", f"{STACK}:express:deidflow-deidentify:*"),
        ("states:DescribeExecution", f"{STACK}:execution:deidflow-backfill/*"),
        ("states:StopExecution", f"{STACK}:execution:deidflow-backfill/*"),
        ("states:RedriveExecution", f"{STACK}:execution:deidflow-backfill/*"),
        (
            "events:PutTargets",
            "arn:aws:events:eu-west-1:111122223333:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule",
        ),
        (
            "events:PutRule",
            "arn:aws:events:eu-west-1:111122223333:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule",
        ),
        (
            "events:DescribeRule",
            "arn:aws:events:eu-west-1:111122223333:rule/StepFunctionsGetEventsForStepFunctionsExecutionRule",
        ),
    }
    logging = template["Resources"]["BackfillStateMachine"]["Properties"]["Logging"]
    assert logging["IncludeExecutionData"] is False
