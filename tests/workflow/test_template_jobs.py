"""Research jobs and the portal in template.yaml (issue 13): what a security review is promised.

The jobs function's role is the export role that team buckets trust: it may only put objects under
deidflow-exports/ of the buckets an administrator registered, and it reads only published studies.
The state machines reach only that function and their own child executions; nothing they log holds
execution data. The portal is private code behind CloudFront, served with strict headers.
(The PHI-side walk over every research role, these included, is in test_template_research.py.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from deidflow.cloud import research_jobs
from deidflow.local.template import function_environment

from tests.conftest import REPO
from tests.workflow.conftest import (
    RESEARCH_KEY_ARN,
    as_list,
    inline_statements,
    of_type,
    referenced,
    roles,
    statements,
)

JOBS = "ResearchJobsFunction"
MACHINES = {"CohortStateMachine": "cohort", "ExportStateMachine": "export"}
TEAM_ACTIONS = {"s3:PutObject", "s3:AbortMultipartUpload"}


# -- a resolver: the template's values as CloudFormation computes them for given parameters -------

PSEUDO = {
    "AWS::Partition": "aws",
    "AWS::Region": "eu-west-1",
    "AWS::AccountId": "111122223333",
    "AWS::StackName": "deidflow",
    "AWS::URLSuffix": "amazonaws.com",
}
NO_VALUE = object()


class Resolver:
    """Ref, Fn::Sub, Fn::Join, Fn::Split, Fn::If and the condition functions, evaluated with
    `parameters` (the others at their defaults). A resource resolves to "<Name>" or "<Name.Attr>",
    which is what the tests compare against."""

    def __init__(self, template: dict, **parameters: str):
        self.template = template
        self.parameters: dict[str, Any] = {}
        for name, spec in template["Parameters"].items():
            value = str(parameters.get(name, spec.get("Default", "")))
            self.parameters[name] = value.split(",") if spec["Type"] == "CommaDelimitedList" else value

    def name(self, name: str) -> Any:
        if name in PSEUDO:
            return PSEUDO[name]
        if name in self.parameters:
            return self.parameters[name]
        assert name in self.template["Resources"], name
        return f"<{name}>"

    def condition(self, name: str) -> bool:
        return bool(self(self.template["Conditions"][name]))

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [v for v in (self(item) for item in value) if v is not NO_VALUE]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            [(function, argument)] = value.items()
            if function == "Ref":
                return NO_VALUE if argument == "AWS::NoValue" else self.name(argument)
            if function == "Fn::GetAtt":
                return f"<{argument[0]}.{argument[1]}>"
            if function == "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                local = {k: self(v) for k, v in variables.items()}

                def substitute(match: re.Match[str]) -> str:
                    key = match.group(1)
                    if key in local:
                        return str(local[key])
                    if "." in key:
                        return f"<{key}>"
                    resolved = self.name(key)
                    assert isinstance(resolved, str), (key, resolved)  # a list cannot be in a string
                    return resolved

                return re.sub(r"\$\{([^}!]+)\}", substitute, text)
            if function == "Fn::Join":
                separator, parts = argument
                parts = self(parts)
                return separator.join(str(p) for p in (parts if isinstance(parts, list) else [parts]))
            if function == "Fn::Split":
                separator, text = argument
                return str(self(text)).split(separator)
            if function == "Fn::If":
                condition, granted, otherwise = argument
                return self(granted if self.condition(condition) else otherwise)
            if function == "Fn::Equals":
                return self(argument[0]) == self(argument[1])
            if function == "Fn::Not":
                return not self(argument[0])
            if function == "Condition":
                return self.condition(argument)
        return {k: v for k, v in ((k, self(v)) for k, v in value.items()) if v is not NO_VALUE}


def granted_pairs(template: dict, role: str, **parameters: str) -> set[tuple[str, str]]:
    """(action, resource) for every statement of `role`'s policies, resolved."""
    resolve = Resolver(template, **parameters)
    found = set()
    for policy in resolve(template["Resources"][role]["Properties"]["Policies"]):
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow", statement
            for action in as_list(statement["Action"]):
                for resource in as_list(statement["Resource"]):
                    found.add((action, resource))
    return found


def grants(resource: dict, prefix: str) -> dict[str, set[str]]:
    """Action -> the resources (as JSON) it is granted on, for the actions starting with `prefix`."""
    found: dict[str, set[str]] = {}
    for statement in statements(resource):
        for action in as_list(statement["Action"]):
            if action.startswith(prefix):
                found.setdefault(action, set()).update(
                    json.dumps(r, sort_keys=True) for r in as_list(statement["Resource"])
                )
    return found


def pairs(resource: dict) -> set[tuple[str, str]]:
    return {(action, arn) for action, arns in grants(resource, "").items() for arn in arns}


def sub(text: str) -> str:
    return json.dumps({"Fn::Sub": text}, sort_keys=True)


def getatt(name: str) -> str:
    return json.dumps({"Fn::GetAtt": [name, "Arn"]}, sort_keys=True)


def ref(name: str) -> str:
    return json.dumps({"Ref": name}, sort_keys=True)


# -- the export role -------------------------------------------------------------------------------


def test_the_export_role_writes_only_to_the_exports_bucket_and_team_prefixes(resources):
    """S3, as written: it reads published studies and the profiles file, works in the exports
    bucket's three prefixes, and may only put objects in team buckets (no read, list or delete:
    the team's data stays the team's). ListBucket on the exports bucket only, so that a key not yet
    written answers NoSuchKey (a resumed job reads what is done)."""
    exports = [sub(f"${{ExportsBucket.Arn}}/{prefix}/*") for prefix in ("jobs", "exports", "cohorts")]
    [team] = [
        s for s in inline_statements(JOBS, resources[JOBS]) if referenced(s["Resource"]) == {"ExportDestinationBuckets"}
    ]
    team_arns = json.dumps(team["Resource"], sort_keys=True)
    assert grants(resources[JOBS], "s3:") == {
        "s3:GetObject": {
            sub("${ResearchBucket.Arn}/studies/*"),
            sub("${ResearchBucket.Arn}/headers/*"),
            sub("${AccessConfigBucket.Arn}/profiles.yaml"),
            *exports,
        },
        "s3:PutObject": {*exports, team_arns},
        "s3:AbortMultipartUpload": {team_arns},
        "s3:ListBucket": {getatt("ExportsBucket")},
    }
    assert set(team["Action"]) == TEAM_ACTIONS and "Condition" not in team
    # And the team grant exists only when buckets are registered.
    [conditional] = [
        s for s in resources[JOBS]["Properties"]["Policies"][0]["Statement"] if "Fn::If" in s and s["Fn::If"][1] == team
    ]
    assert conditional["Fn::If"][0] == "HasExportDestinations" and conditional["Fn::If"][2] == {"Ref": "AWS::NoValue"}


@pytest.mark.parametrize("registered", ["team-a,team-b", "lung.team-exports"])
def test_registered_team_buckets_resolve_to_exactly_their_deidflow_exports_prefix(template, registered):
    """With the parameter set as an operator sets it, the role can put objects under
    <bucket>/deidflow-exports/* of exactly those buckets, and do nothing else with any bucket that
    is not the template's own."""
    buckets = registered.split(",")
    granted = granted_pairs(template, JOBS, ExportDestinationBuckets=registered)
    # Anything not the template's own ("<Name...>"): an ARN written out, a "*".
    outside = {(a, r) for a, r in granted if not r.startswith("<") and not r.startswith("arn:aws:events:")}
    assert outside == {(a, f"arn:aws:s3:::{b}/deidflow-exports/*") for a in TEAM_ACTIONS for b in buckets}
    # The functions are told the same buckets the role may write (the steps refuse any other).
    resolve = Resolver(template, ExportDestinationBuckets=registered)
    for function in (JOBS, "ResearchApiFunction"):
        variables = resolve(template["Resources"][function]["Properties"]["Environment"]["Variables"])
        assert variables["EXPORT_BUCKETS"] == registered, function


def test_no_team_bucket_is_granted_when_none_is_registered(template):
    granted = granted_pairs(template, JOBS)
    assert not [r for _, r in granted if "deidflow-exports" in r or r.startswith("arn:aws:s3:::")]
    assert not Resolver(template).condition("HasExportDestinations")
    env = Resolver(template)(template["Resources"][JOBS]["Properties"]["Environment"]["Variables"])
    assert env["EXPORT_BUCKETS"] == ""


def test_a_registered_name_cannot_widen_the_grant(template):
    """Each name becomes part of an IAM ARN: CloudFormation checks every item against the pattern,
    so a wildcard or a stray character is refused at deploy time."""
    spec = template["Parameters"]["ExportDestinationBuckets"]
    assert spec["Type"] == "CommaDelimitedList" and spec["Default"] == ""
    pattern = spec["AllowedPattern"]
    for name in ("", "team-a", "lung.team-exports", "abc", "a" * 63):
        assert re.fullmatch(pattern, name), name
    for name in ("*", "team-*", "team-?", "te am", "Team-A", "team-a/x", "ab", "a" * 64, "-team", "team-", " team"):
        assert not re.fullmatch(pattern, name), name


def test_the_export_role_reads_the_index_and_records_only_its_jobs_progress(resources):
    """Everything but S3, exactly: index and catalog read (never written), its job read and updated
    (the API creates jobs), the completion event on the default bus from its own source only, and
    the research key. No secret, no Step Functions, nothing of the PHI side's keys."""
    index_reads = {getatt("IndexTable"), sub("${IndexTable.Arn}/index/*"), getatt("CatalogTable")}
    role = resources[JOBS]
    everything = {a: r for a, r in grants(role, "").items() if not a.startswith("s3:")}
    assert everything == {
        "dynamodb:GetItem": index_reads | {getatt("JobsTable")},
        "dynamodb:BatchGetItem": index_reads,
        "dynamodb:Query": index_reads,
        "dynamodb:Scan": index_reads,
        "dynamodb:UpdateItem": {getatt("JobsTable")},
        "events:PutEvents": {sub("arn:${AWS::Partition}:events:${AWS::Region}:${AWS::AccountId}:event-bus/default")},
        "kms:Decrypt": {json.dumps(RESEARCH_KEY_ARN, sort_keys=True)},
        "kms:GenerateDataKey": {json.dumps(RESEARCH_KEY_ARN, sort_keys=True)},
    }
    [events] = [s for s in statements(role) if s["Action"] == "events:PutEvents"]
    assert events["Condition"] == {"StringEquals": {"events:source": "deidflow.research"}}


def test_the_jobs_function_is_configured_as_the_contract_says(template, resources):
    props = resources[JOBS]["Properties"]
    assert props["CodeUri"].rstrip("/") == "functions/research_jobs"
    assert (REPO / "functions" / "research_jobs" / "app.py").is_file()
    assert (props["Timeout"], props["MemorySize"]) == (900, 1024)
    assert props["ReservedConcurrentExecutions"] == {"Ref": "ResearchJobsConcurrency"}
    assert template["Parameters"]["ResearchJobsConcurrency"]["Default"] == 20
    assert props["KmsKeyArn"] == RESEARCH_KEY_ARN
    group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
    assert group["KmsKeyId"] == RESEARCH_KEY_ARN and group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert props["Environment"]["Variables"] == {
        "PROFILES_BUCKET": {"Ref": "AccessConfigBucket"},
        "PROFILES_KEY": "profiles.yaml",
        "JOBS_TABLE": {"Ref": "JobsTable"},
        "EXPORTS_BUCKET": {"Ref": "ExportsBucket"},
        "EXPORT_BUCKETS": {"Fn::Join": [",", {"Ref": "ExportDestinationBuckets"}]},
        "EVENT_BUS_NAME": "default",
        "POWERTOOLS_SERVICE_NAME": "deidflow-research-jobs",
    }


def test_the_api_and_the_jobs_agree_on_every_name_and_the_local_runner_resolves_them(template):
    """`deidflow local api` runs both functions in one process on the union of their environments:
    each must resolve locally, and a name they share must be the same resource."""
    names = ["ResearchBucket", "IndexTable", "CatalogTable", "AuditTable", "AccessConfigBucket", "JobsTable"]
    names += ["ExportsBucket", "CohortStateMachine", "ExportStateMachine"]
    names += ["MappingTable", "StatusTable", "PseudonymKeySecret", "ObjectRefKeySecret"]  # Globals' PHI-side names
    local = {name: f"local-{name}" for name in names}
    api, jobs = (function_environment(template, local, "local", f) for f in ("ResearchApiFunction", JOBS))
    shared = (set(api) & set(jobs)) - {"POWERTOOLS_SERVICE_NAME"}
    assert {"JOBS_TABLE", "EXPORTS_BUCKET", "EXPORT_BUCKETS", "PROFILES_BUCKET", "CATALOG_TABLE"} <= shared
    assert {k: api[k] for k in shared} == {k: jobs[k] for k in shared}
    assert api["COHORT_STATE_MACHINE_ARN"] == "local-CohortStateMachine"
    assert api["EXPORT_STATE_MACHINE_ARN"] == "local-ExportStateMachine"
    assert api["AUDITOR_GROUP"] == template["Parameters"]["AuditorGroup"]["Default"] == "auditors"


# -- the API's part ---------------------------------------------------------------------------------


def test_the_api_starts_only_the_job_state_machines_and_reads_only_what_jobs_delivered(resources):
    api = resources["ResearchApiFunction"]
    arn = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${AWS::StackName}-"
    # Its jobs' own executions (the machine name, then ":"; a Map's children are "<name>/..."), no others.
    executions = {sub(f"{arn}cohort:*"), sub(f"{arn}export:*")}
    assert grants(api, "states:") == {
        "states:StartExecution": {ref("CohortStateMachine"), ref("ExportStateMachine")},
        "states:DescribeExecution": executions,
        "states:RedriveExecution": executions,
    }
    assert {(a, r) for a, r in pairs(api) if "ExportsBucket" in r} == {
        ("s3:GetObject", sub("${ExportsBucket.Arn}/exports/*")),
        ("s3:GetObject", sub("${ExportsBucket.Arn}/cohorts/*")),
    }
    # Jobs: created, listed per owner, followed and resumed; the audit trail a day at a time.
    granted = pairs(api)
    jobs = {getatt("JobsTable"), sub("${JobsTable.Arn}/index/by_owner")}
    assert {(a, r) for a, r in granted if "JobsTable" in r} == {
        (action, arn)
        for action in ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query")
        for arn in jobs
    }
    assert {(a, r) for a, r in granted if "AuditTable" in r} == {
        ("dynamodb:PutItem", getatt("AuditTable")),
        ("dynamodb:Query", sub("${AuditTable.Arn}/index/by_day")),
    }
    variables = api["Properties"]["Environment"]["Variables"]
    assert variables["COHORT_STATE_MACHINE_ARN"] == {"Ref": "CohortStateMachine"}
    assert variables["EXPORT_STATE_MACHINE_ARN"] == {"Ref": "ExportStateMachine"}
    assert variables["AUDITOR_GROUP"] == {"Ref": "AuditorGroup"}


# -- the state machines -----------------------------------------------------------------------------


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_a_job_state_machine_invokes_only_the_jobs_function_and_starts_only_its_own_children(resources, machine):
    """The Distributed Map's items are child executions of the same state machine: it may start
    itself and follow (and, when redriven, redrive) its own executions, nothing else; it may call
    the jobs function, no other.
    The export's chunk Map reads the plan's chunk list, in jobs/ of the exports bucket."""
    props = resources[machine]["Properties"]
    name = "${AWS::StackName}-" + MACHINES[machine]
    assert props["Name"] == {"Fn::Sub": name} and props["Type"] == "STANDARD"
    arn = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:"
    assert grants(resources[machine], "states:") == {
        "states:StartExecution": {sub(f"{arn}stateMachine:{name}")},
        "states:DescribeExecution": {sub(f"{arn}execution:{name}/*")},
        "states:StopExecution": {sub(f"{arn}execution:{name}/*")},
        "states:RedriveExecution": {sub(f"{arn}execution:{name}/*")},
    }
    assert grants(resources[machine], "lambda:") == {"lambda:InvokeFunction": {getatt(JOBS), sub(f"${{{JOBS}.Arn}}:*")}}
    reads = grants(resources[machine], "s3:")
    kms = grants(resources[machine], "kms:")
    if machine == "ExportStateMachine":
        assert reads == {"s3:GetObject": {sub("${ExportsBucket.Arn}/jobs/*")}}
        assert kms == {"kms:Decrypt": {json.dumps(RESEARCH_KEY_ARN, sort_keys=True)}}
    else:
        assert reads == {} and kms == {}
    services = {a.split(":")[0] for a in grants(resources[machine], "")}
    assert services <= {"states", "lambda", "s3", "kms", "logs"}
    # Its definition calls only that function (and S3 for the item list), in Distributed Maps.
    assert props["DefinitionSubstitutions"] == {"ResearchJobsFunctionArn": {"Fn::GetAtt": [JOBS, "Arn"]}}
    asl_text = (REPO / props["DefinitionUri"]).read_text()
    assert set(re.findall(r"\$\{(\w+)\}", asl_text)) == {"ResearchJobsFunctionArn"}
    tasks, maps = [], []

    def walk(states: dict) -> None:
        for state in states.values():
            if state["Type"] == "Task":
                tasks.append(state)
            if state["Type"] == "Map":
                maps.append(state)
                walk(state["ItemProcessor"]["States"])

    walk(json.loads(asl_text)["States"])
    assert tasks and maps
    for task in tasks:
        assert task["Resource"] == "arn:aws:states:::lambda:invoke", task
        assert task["Parameters"]["FunctionName"] == "${ResearchJobsFunctionArn}", task
    for state in maps:
        assert state["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}
        reader = state.get("ItemReader")
        assert reader is None or reader["Resource"] == "arn:aws:states:::s3:getObject"
    assert any("ItemReader" in m for m in maps) == (machine == "ExportStateMachine")


PERMANENT = ["JobRequestError", "JobLimitError", "GapError"]


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_only_our_own_errors_are_caught_so_that_a_redrive_reruns_what_failed(resources, machine):
    """A Catch turns a failure into a success of its state, which a redrive then skips: only the
    errors no rerun can mend (the request, a limit, a gap) go to Failed; a Map or a step that ran
    out of retries fails the execution where it stands."""
    states = json.loads((REPO / resources[machine]["Properties"]["DefinitionUri"]).read_text())["States"]
    for name, state in states.items():
        if state["Type"] == "Map":
            assert "Catch" not in state, name
        elif state["Type"] == "Task" and name != "Failed":
            assert [c["ErrorEquals"] for c in state["Catch"]] == [PERMANENT], name
            assert [c["Next"] for c in state["Catch"]] == ["Failed"], name
            retries = state["Retry"]
            assert retries[0] == {"ErrorEquals": PERMANENT, "MaxAttempts": 0}, name
            assert retries[1]["ErrorEquals"] == ["States.ALL"] and retries[1]["MaxAttempts"] >= 3, name
    assert states["Failed"]["Next"] == "JobFailed" and states["JobFailed"]["Type"] == "Fail"
    assert states["JobFailed"]["Error"] == research_jobs.JOB_FAILED_ERROR  # resume knows not to redrive it


def test_an_execution_that_fails_uncaught_or_is_redriven_reaches_the_jobs_function(resources):
    """The execution's own status-change events, for the two job machines only, go to the jobs
    function (step execution_changed), which marks the job FAILED or RUNNING again."""
    [event] = resources[JOBS]["Properties"]["Events"].values()
    assert event["Type"] == "EventBridgeRule"
    pattern = event["Properties"]["Pattern"]
    assert pattern["source"] == ["aws.states"]
    assert pattern["detail-type"] == ["Step Functions Execution Status Change"]
    assert pattern["detail"]["stateMachineArn"] == [{"Ref": "CohortStateMachine"}, {"Ref": "ExportStateMachine"}]
    assert set(pattern["detail"]["status"]) == {"RUNNING", *research_jobs.ENDED_UNSUCCESSFULLY}
    assert "EventBusName" not in event["Properties"]  # Step Functions' events are on the default bus
    assert event["Properties"]["RetryPolicy"]["MaximumRetryAttempts"] >= 3


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_a_job_state_machine_logs_errors_only_without_execution_data(resources, machine):
    props = resources[machine]["Properties"]
    assert props["Tracing"] == {"Enabled": True}
    logging = props["Logging"]
    assert logging["Level"] == "ERROR"
    assert logging["IncludeExecutionData"] is False  # inputs, outputs and error causes stay out
    [destination] = logging["Destinations"]
    [group] = referenced(destination)
    group_props = resources[group]["Properties"]
    assert group_props["KmsKeyId"] == RESEARCH_KEY_ARN and group_props["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    assert group_props["LogGroupName"] == {"Fn::Sub": f"/aws/vendedlogs/states/${{AWS::StackName}}-{MACHINES[machine]}"}


# -- the exports bucket and the jobs table ----------------------------------------------------------


def test_the_exports_bucket_expires_everything_is_private_tls_only_and_under_the_research_key(template, resources):
    props = resources["ExportsBucket"]["Properties"]
    rules = [r for r in props["LifecycleConfiguration"]["Rules"] if r["Status"] == "Enabled"]
    [expiry] = [r for r in rules if "ExpirationInDays" in r]
    # The whole bucket: no prefix, no filter (exports, cohorts and working files alike).
    assert not {"Prefix", "Filter", "TagFilters"} & set(expiry)
    assert expiry["ExpirationInDays"] == {"Ref": "ExportExpirationDays"}
    assert expiry["NoncurrentVersionExpiration"] == {"NoncurrentDays": 1}
    assert expiry["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    days = template["Parameters"]["ExportExpirationDays"]
    assert days["Default"] == 14 and days["MinValue"] >= 1
    assert all(props["PublicAccessBlockConfiguration"][k] is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))  # fmt: skip
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    [rule] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": RESEARCH_KEY_ARN}
    [policy] = [
        p
        for p in of_type(resources, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": "ExportsBucket"}
    ]
    [deny] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert deny["Resource"] == [{"Fn::GetAtt": ["ExportsBucket", "Arn"]}, {"Fn::Sub": "${ExportsBucket.Arn}/*"}]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_the_exports_bucket_is_read_and_written_by_the_job_roles_only(resources):
    """Who touches the managed exports: the jobs function (its prefixes), the API (delivered files),
    the export state machine (the chunk list). No role deletes from it."""
    touching: dict[str, set[str]] = {}
    for name, role in roles(resources).items():
        for action, arns in grants(role, "").items():
            if any("ExportsBucket" in arn for arn in arns):
                touching.setdefault(name, set()).add(action)
    assert touching == {
        JOBS: {"s3:GetObject", "s3:PutObject", "s3:ListBucket"},
        "ResearchApiFunction": {"s3:GetObject"},
        "ExportStateMachine": {"s3:GetObject"},
    }


def test_the_jobs_table_lists_jobs_per_owner_and_is_recoverable_under_the_research_key(resources):
    table = resources["JobsTable"]
    props = table["Properties"]
    assert table["DeletionPolicy"] == "Retain"
    assert props["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"}]
    [by_owner] = props["GlobalSecondaryIndexes"]
    assert by_owner["IndexName"] == "by_owner"
    assert by_owner["KeySchema"] == [
        {"AttributeName": "owner_sub", "KeyType": "HASH"},
        {"AttributeName": "created", "KeyType": "RANGE"},
    ]
    assert by_owner["Projection"] == {"ProjectionType": "ALL"}
    types = {d["AttributeName"]: d["AttributeType"] for d in props["AttributeDefinitions"]}
    assert types == {"job_id": "S", "owner_sub": "S", "created": "S"}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["SSESpecification"] == {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": {"Ref": "ResearchKey"}}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}


# -- no credential anywhere -------------------------------------------------------------------------


def test_no_credential_reaches_an_environment_an_output_or_a_log(template, resources):
    """Tokens stay in the browser and the request: no client secret is ever read into the stack
    (PipelineClient's is only in Cognito), no research function is given a secret or can read one,
    and the API's access log holds no header, query string or body."""

    def walk(value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield k, v
                yield from walk(v)
        elif isinstance(value, list):
            for item in value:
                yield from walk(item)

    everything = {k: v for k, v in template.items() if k != "Description"}
    for key, value in walk(everything):
        if key == "Fn::GetAtt":
            assert as_list(value)[-1] != "ClientSecret" and not str(value).endswith(".ClientSecret"), value
        if key == "Fn::Sub":
            assert ".ClientSecret}" not in json.dumps(value), value
        if isinstance(value, str):
            assert "{{resolve:" not in value, value  # no dynamic reference to a secret
    clients = of_type(resources, "AWS::Cognito::UserPoolClient")
    assert resources["PortalClient"]["Properties"]["GenerateSecret"] is False  # a browser keeps no secret
    secrets = set(of_type(resources, "AWS::SecretsManager::Secret"))
    no_echo = {n for n, p in template["Parameters"].items() if p.get("NoEcho")}
    research = ("ResearchApiFunction", "AuditSealerFunction", JOBS)
    for name in research:
        variables = resources[name]["Properties"].get("Environment", {}).get("Variables", {})
        for variable, value in variables.items():
            named = referenced(value)
            assert not named & (secrets | set(clients) | no_echo), (name, variable)
            if isinstance(value, str):
                # A literal is a setting (a number, a key name, a service name), never a credential.
                assert re.fullmatch(r"[\w.:/-]{0,40}", value), (name, variable)
        # The PHI side's secret ids reach every function through Globals; these cannot read them.
        assert not grants(resources[name], "secretsmanager:"), name
    for machine in MACHINES:
        assert not grants(resources[machine], "secretsmanager:"), machine
    log_format = resources["ResearchApi"]["Properties"]["AccessLogSettings"]["Format"]
    assert not re.search(r"\$(request|input|context\.request\w*)\.|header|querystring|body", log_format, re.I)


# -- the portal ------------------------------------------------------------------------------------


def csp_directives(resources: dict) -> dict[str, list[str]]:
    headers = resources["PortalHeadersPolicy"]["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    csp = headers["ContentSecurityPolicy"]
    assert csp["Override"] is True
    text, _ = csp["ContentSecurityPolicy"]["Fn::Sub"]
    directives: dict[str, list[str]] = {}
    for part in " ".join(text.split()).split(";"):
        if part.strip():
            name, *sources = part.split()
            assert name not in directives, name
            directives[name] = sources
    return directives


def test_the_portal_is_private_and_read_only_by_its_distribution(resources):
    bucket = resources["PortalBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"][k] is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))  # fmt: skip
    assert bucket["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    assert "WebsiteConfiguration" not in bucket  # no public website endpoint
    # SSE-S3: CloudFront's origin access control could read SSE-KMS only with the research key opened to it.
    [rule] = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    assert bucket["LoggingConfiguration"]["DestinationBucketName"] == {"Ref": "AccessLogBucket"}

    [policy] = [
        p
        for p in of_type(resources, "AWS::S3::BucketPolicy").values()
        if p["Properties"]["Bucket"] == {"Ref": "PortalBucket"}
    ]
    allows = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Allow"]
    distribution = "arn:${AWS::Partition}:cloudfront::${AWS::AccountId}:distribution/${PortalDistribution}"
    assert allows == [
        {
            "Sid": "PortalDistributionReads",
            "Effect": "Allow",
            "Principal": {"Service": "cloudfront.amazonaws.com"},
            "Action": "s3:GetObject",
            "Resource": {"Fn::Sub": "${PortalBucket.Arn}/*"},
            "Condition": {"StringEquals": {"AWS:SourceArn": {"Fn::Sub": distribution}}},
        }
    ]
    [deny] = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and deny["Action"] == "s3:*"

    config = resources["PortalDistribution"]["Properties"]["DistributionConfig"]
    assert config["DefaultRootObject"] == "index.html"
    [origin] = config["Origins"]
    assert origin["DomainName"] == {"Fn::GetAtt": ["PortalBucket", "RegionalDomainName"]}
    assert referenced(origin["OriginAccessControlId"]) == {"PortalOriginAccessControl"}
    assert origin["S3OriginConfig"] == {"OriginAccessIdentity": ""}  # no legacy origin access identity
    oac = resources["PortalOriginAccessControl"]["Properties"]["OriginAccessControlConfig"]
    assert (oac["OriginAccessControlOriginType"], oac["SigningBehavior"], oac["SigningProtocol"]) == (
        "s3",
        "always",
        "sigv4",
    )
    for behavior in [config["DefaultCacheBehavior"], *config.get("CacheBehaviors", [])]:
        assert behavior["TargetOriginId"] == origin["Id"]
        assert behavior["ViewerProtocolPolicy"] in ("redirect-to-https", "https-only")
        assert set(behavior["AllowedMethods"]) == {"GET", "HEAD"}
        assert behavior["ResponseHeadersPolicyId"] == {"Ref": "PortalHeadersPolicy"}


def test_the_portal_is_served_with_a_strict_csp_hsts_and_nosniff(resources):
    headers = resources["PortalHeadersPolicy"]["Properties"]["ResponseHeadersPolicyConfig"]["SecurityHeadersConfig"]
    csp = csp_directives(resources)
    assert csp["default-src"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["object-src"] == ["'none'"] and csp["base-uri"] == ["'none'"]
    assert csp["script-src"] == ["'self'"]  # no inline or eval'd script, no other origin
    # The browser talks to the portal, the research API and the Cognito domain, nothing else.
    assert csp["connect-src"] == [
        "'self'",
        "https://${ResearchApi}.execute-api.${AWS::Region}.${AWS::URLSuffix}",
        "https://${AuthPrefix}.auth.${AWS::Region}.amazoncognito.com",
    ]
    _, variables = headers["ContentSecurityPolicy"]["ContentSecurityPolicy"]["Fn::Sub"]
    assert variables == {"AuthPrefix": {"Ref": "ResearchUserPoolDomain"}}
    for sources in csp.values():
        assert not {"*", "'unsafe-inline'", "'unsafe-eval'", "http:", "https:"} & set(sources), sources
    hsts = headers["StrictTransportSecurity"]
    assert hsts["Override"] is True and hsts["AccessControlMaxAgeSec"] >= 31536000 and hsts["IncludeSubdomains"] is True
    assert headers["ContentTypeOptions"] == {"Override": True}
    assert headers["FrameOptions"] == {"Override": True, "FrameOption": "DENY"}


def test_the_outputs_name_the_new_resources(template):
    outputs = template["Outputs"]
    assert outputs["PortalUrl"]["Value"] == {"Fn::Sub": "https://${PortalDistribution.DomainName}"}
    assert outputs["ExportRoleArn"]["Value"] == {"Fn::GetAtt": [f"{JOBS}Role", "Arn"]}
    for output, resource in {
        "PortalBucketName": "PortalBucket",
        "ExportsBucketName": "ExportsBucket",
        "JobsTableName": "JobsTable",
        "CohortStateMachineArn": "CohortStateMachine",
        "ExportStateMachineArn": "ExportStateMachine",
    }.items():
        assert outputs[output]["Value"] == {"Ref": resource}, output
