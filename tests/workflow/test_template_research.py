"""The research side of template.yaml (issue 12): what a security review is promised about it.

Research-serving roles live in their own trust domain (ResearchKey): nothing of the PHI side is
granted to them, every route needs a Cognito token, the audit trail cannot be rewritten.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.workflow.conftest import (
    LOG_DELIVERY,
    PHI_SIDE,
    RESEARCH_KEY_ARN,
    as_list,
    inline_statements,
    of_type,
    referenced,
    roles,
    statements,
)

# The research side's functions and state machines: their roles hold ResearchKey and the research
# resources, nothing of the PHI side. Only the API function is behind the HTTP API.
RESEARCH_FUNCTIONS = ("ResearchApiFunction", "AuditSealerFunction", "ResearchJobsFunction")
RESEARCH_STATE_MACHINES = ("CohortStateMachine", "ExportStateMachine")


def http_api_events(resources: dict) -> Iterator[tuple[str, dict]]:
    for name, function in of_type(resources, "AWS::Serverless::Function").items():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                yield name, event.get("Properties", {})


def research_log_groups(resources: dict) -> set[str]:
    groups = {resources[f]["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] for f in RESEARCH_FUNCTIONS}
    for machine in RESEARCH_STATE_MACHINES:
        for destination in resources[machine]["Properties"]["Logging"]["Destinations"]:
            groups |= referenced(destination)
    for api in of_type(resources, "AWS::Serverless::HttpApi").values():
        groups |= referenced(api["Properties"]["AccessLogSettings"]["DestinationArn"])
    return groups


def test_every_route_needs_the_cognito_jwt(resources):
    """No route without the authorizer: not one marked NONE, not one on an implicit API (an HttpApi
    event without ApiId gets SAM's default API, which has no authorizer), no OPTIONS or ANY route
    (the preflight would meet the authorizer; API Gateway answers it when CORS is configured), and
    no other way in (REST API, function URL)."""
    apis = of_type(resources, "AWS::Serverless::HttpApi")
    assert set(apis) == {"ResearchApi"}
    auth = apis["ResearchApi"]["Properties"]["Auth"]
    assert auth["DefaultAuthorizer"] == "CognitoJwt" and set(auth["Authorizers"]) == {"CognitoJwt"}
    assert "AllowOrigins" in apis["ResearchApi"]["Properties"]["CorsConfiguration"]

    routes = set()
    for name, event in http_api_events(resources):
        assert name == "ResearchApiFunction", name
        assert event.get("ApiId") == {"Ref": "ResearchApi"}, (name, event)
        assert event.get("Auth", {}).get("Authorizer", "CognitoJwt") == "CognitoJwt", (name, event)
        assert event["Method"].upper() not in ("OPTIONS", "ANY"), (name, event)
        routes.add((event["Method"].upper(), event["Path"]))
    assert routes >= {("GET", "/dicomweb/{proxy+}"), ("GET", "/research/{proxy+}"), ("POST", "/research/{proxy+}")}
    assert all(path.startswith(("/dicomweb/", "/research/")) for _, path in routes)

    for kind in ("AWS::Serverless::Api", "AWS::ApiGateway::RestApi", "AWS::ApiGatewayV2::Api",
                 "AWS::ApiGatewayV2::Route", "AWS::Lambda::Url"):  # fmt: skip
        assert not of_type(resources, kind), kind
    for name, function in of_type(resources, "AWS::Serverless::Function").items():
        assert "FunctionUrlConfig" not in function["Properties"], name


def test_the_authorizer_trusts_the_user_pool_and_only_its_two_clients(resources):
    authorizer = resources["ResearchApi"]["Properties"]["Auth"]["Authorizers"]["CognitoJwt"]
    assert authorizer["IdentitySource"] == "$request.header.Authorization"
    jwt = authorizer["JwtConfiguration"]
    assert jwt["issuer"] == {"Fn::Sub": "https://cognito-idp.${AWS::Region}.amazonaws.com/${ResearchUserPool}"}
    assert jwt["audience"] == [{"Ref": "PortalClient"}, {"Ref": "PipelineClient"}]
    clients = of_type(resources, "AWS::Cognito::UserPoolClient")
    assert set(clients) == {"PortalClient", "PipelineClient"}
    for client in clients.values():
        assert client["Properties"]["UserPoolId"] == {"Ref": "ResearchUserPool"}


def test_only_invited_users_with_strong_passwords_and_the_clients_have_their_flows(resources):
    pool = resources["ResearchUserPool"]["Properties"]
    assert pool["AdminCreateUserConfig"]["AllowAdminCreateUserOnly"] is True
    assert pool["DeletionProtection"] == "ACTIVE"
    assert pool["MfaConfiguration"] != "OFF" and "SOFTWARE_TOKEN_MFA" in pool["EnabledMfas"]
    passwords = pool["Policies"]["PasswordPolicy"]
    assert passwords["MinimumLength"] >= 12
    assert all(passwords[k] for k in ("RequireLowercase", "RequireUppercase", "RequireNumbers", "RequireSymbols"))

    portal = resources["PortalClient"]["Properties"]
    assert portal["GenerateSecret"] is False  # it runs in a browser: a secret there is no secret
    assert portal["AllowedOAuthFlows"] == ["code"]  # never implicit: tokens in URLs
    assert portal["SupportedIdentityProviders"] == ["COGNITO"]
    assert portal["PreventUserExistenceErrors"] == "ENABLED"
    assert portal["AccessTokenValidity"] == 60 and portal["TokenValidityUnits"]["AccessToken"] == "minutes"
    pipeline = resources["PipelineClient"]["Properties"]
    assert pipeline["GenerateSecret"] is True
    assert pipeline["AllowedOAuthFlows"] == ["client_credentials"]
    assert pipeline["AllowedOAuthScopes"] == ["deidflow/read"]
    server = resources["ResearchResourceServer"]["Properties"]
    assert server["Identifier"] == "deidflow" and [s["ScopeName"] for s in server["Scopes"]] == ["read"]


def test_the_audit_trail_is_locked_in_compliance_mode_for_the_retention_parameter(template, resources):
    bucket = resources["AuditBucket"]
    props = bucket["Properties"]
    assert props["ObjectLockEnabled"] is True
    assert props["ObjectLockConfiguration"]["ObjectLockEnabled"] == "Enabled"
    assert props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"] == {
        "Mode": "COMPLIANCE",
        "Days": {"Ref": "AuditRetentionDays"},
    }
    assert template["Parameters"]["AuditRetentionDays"]["Default"] == 2190
    assert props["VersioningConfiguration"]["Status"] == "Enabled"
    for name in ("AuditBucket", "AuditTable"):
        assert resources[name]["DeletionPolicy"] == "Retain", name
    # No role may delete, re-lock or unlock what the sealer wrote; the sealer only adds segments.
    grants = {}
    for name, role in roles(resources).items():
        for statement in statements(role):
            if "AuditBucket" in referenced(statement["Resource"]):
                grants[name] = (as_list(statement["Action"]), statement["Resource"])
    assert grants == {"AuditSealerFunction": (["s3:PutObject"], {"Fn::Sub": "${AuditBucket.Arn}/segments/*"})}
    table = resources["AuditTable"]["Properties"]
    [by_day] = table["GlobalSecondaryIndexes"]
    assert by_day["IndexName"] == "by_day" and by_day["Projection"] == {"ProjectionType": "ALL"}


def test_every_research_resource_is_under_the_research_key(resources):
    key = resources["ResearchKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    # CloudWatch Logs must be let in by the key policy, or the research log groups fail to create.
    services = [s["Principal"].get("Service") for s in key["KeyPolicy"]["Statement"]]
    assert {"Fn::Sub": "logs.${AWS::Region}.amazonaws.com"} in services

    for name in ("ResearchBucket", "AuditBucket", "AccessConfigBucket", "ExportsBucket"):
        [rule] = resources[name]["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": RESEARCH_KEY_ARN}
    for name in ("IndexTable", "CatalogTable", "AuditTable", "JobsTable"):
        assert resources[name]["Properties"]["SSESpecification"]["KMSMasterKeyId"] == {"Ref": "ResearchKey"}, name
    groups = research_log_groups(resources)
    # Each function's and state machine's own, and the API's access log.
    assert len(groups) == len(RESEARCH_FUNCTIONS) + len(RESEARCH_STATE_MACHINES) + 1
    for name in groups:
        assert resources[name]["Properties"]["KmsKeyId"] == RESEARCH_KEY_ARN, name
    # Their environment too: Globals encrypt it with DataKey, which these roles must not hold.
    for name in RESEARCH_FUNCTIONS:
        assert resources[name]["Properties"]["KmsKeyArn"] == RESEARCH_KEY_ARN, name


def outside_the_template(resources: dict, name: str, statement: dict, resource: Any) -> bool:
    """The few resources a research role may name that are no resource of the template, each for
    its reason: "*" for the log delivery APIs only; a state machine's own ARN and executions,
    written out (a Ref to itself would be circular); the API's jobs' executions (describe and
    redrive only: an execution ARN has no Ref); the default event bus, for PutEvents only;
    the team buckets of ExportDestinationBuckets, for putting objects only (which prefix:
    test_template_jobs.py)."""
    actions = frozenset(as_list(statement["Action"]))
    if resource == "*":
        return actions <= LOG_DELIVERY
    if referenced(resource) == {"ExportDestinationBuckets"}:
        return name == "ResearchJobsFunction" and actions <= {"s3:PutObject", "s3:AbortMultipartUpload"}
    if referenced(resource) or not isinstance(resource, dict) or not isinstance(resource.get("Fn::Sub"), str):
        return False
    arn = "arn:${AWS::Partition}:%s:${AWS::Region}:${AWS::AccountId}:%s"
    if name in RESEARCH_STATE_MACHINES:
        own = resources[name]["Properties"]["Name"]["Fn::Sub"]
        machine, executions = arn % ("states", f"stateMachine:{own}"), arn % ("states", f"execution:{own}/*")
        return (resource["Fn::Sub"], actions) in {
            (machine, frozenset({"states:StartExecution"})),
            (executions, frozenset({"states:DescribeExecution", "states:StopExecution", "states:RedriveExecution"})),
        }
    if name == "ResearchApiFunction":  # its jobs' executions: a job's status, and resume's redrive
        jobs = {arn % ("states", f"execution:${{AWS::StackName}}-{kind}:*") for kind in ("cohort", "export")}
        return resource["Fn::Sub"] in jobs and actions == {"states:DescribeExecution", "states:RedriveExecution"}
    return resource["Fn::Sub"] == arn % ("events", "event-bus/default") and actions == {"events:PutEvents"}


def test_research_roles_name_nothing_of_the_phi_side(resources):
    phi = PHI_SIDE | set(of_type(resources, "AWS::SQS::Queue"))
    assert phi <= set(resources)  # a renamed PHI resource would make this test vacuous
    for name in RESEARCH_FUNCTIONS + RESEARCH_STATE_MACHINES:
        properties = resources[name]["Properties"]
        granted = list(inline_statements(name, resources[name]))
        assert granted, name
        for statement in granted:
            assert not {"NotAction", "NotResource", "NotPrincipal"} & set(statement), (name, statement)
            for resource in as_list(statement["Resource"]):
                named = referenced(resource)
                # Every resource is one of the template's: no "*", no hand-written ARN but the few
                # that cannot be a reference.
                assert (named and named <= set(resources)) or outside_the_template(
                    resources, name, statement, resource
                ), (name, resource)
                assert not named & phi, (name, statement)
        # Nothing of the PHI side reaches them otherwise either: events, environment and its key,
        # a state machine's substitutions and log.
        assert not referenced({k: v for k, v in properties.items() if k != "Policies"}) & phi, name


def test_the_research_api_reads_published_studies_only(resources):
    """staging/ holds outputs that may still be quarantined: the API reads studies/* and their header
    sidecars (headers/*) and nothing else of the research bucket."""
    statements = list(inline_statements("ResearchApiFunction", resources["ResearchApiFunction"]))
    s3 = [s for s in statements if any(a.startswith("s3:") for a in as_list(s["Action"]))]
    on_research = [s for s in s3 if "ResearchBucket" in referenced(s["Resource"])]
    assert on_research, "the API must read the published studies"
    for statement in on_research:
        assert as_list(statement["Action"]) == ["s3:GetObject"], statement
        assert as_list(statement["Resource"]) == [
            {"Fn::Sub": "${ResearchBucket.Arn}/studies/*"},
            {"Fn::Sub": "${ResearchBucket.Arn}/headers/*"},
        ], statement
    # And the only other objects it reads are the permission profiles file and what jobs delivered.
    others = [s for s in s3 if s not in on_research]
    assert [(s["Action"], s["Resource"]) for s in others] == [
        ("s3:GetObject", {"Fn::Sub": "${AccessConfigBucket.Arn}/profiles.yaml"}),
        (
            "s3:GetObject",
            [{"Fn::Sub": "${ExportsBucket.Arn}/exports/*"}, {"Fn::Sub": "${ExportsBucket.Arn}/cohorts/*"}],
        ),
    ]


def test_the_catalog_is_in_every_functions_environment_and_written_by_index_header_only(template, resources):
    """Written by IndexHeader; WithdrawSource only deletes the rows a withdrawn instance left empty."""
    assert template["Globals"]["Function"]["Environment"]["Variables"]["CATALOG_TABLE"] == {"Ref": "CatalogTable"}
    catalog = resources["CatalogTable"]["Properties"]
    assert catalog["KeySchema"] == [
        {"AttributeName": "study_instance_uid", "KeyType": "HASH"},
        {"AttributeName": "item", "KeyType": "RANGE"},
    ]
    grants: dict[str, set[str]] = {}
    for name, role in roles(resources).items():
        for statement in statements(role):
            if "CatalogTable" in referenced(statement["Resource"]):
                grants.setdefault(name, set()).update(as_list(statement["Action"]))
    assert grants == {
        # DeleteItem: a moved instance's old series and study, once nothing indexed is left there;
        # BatchGetItem: its rows read first, put only when missing or different.
        "IndexHeaderFunction": {"dynamodb:PutItem", "dynamodb:DeleteItem", "dynamodb:BatchGetItem"},
        "WithdrawSourceFunction": {"dynamodb:DeleteItem"},
        "ResearchApiFunction": {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan"},
        "ResearchJobsFunction": {"dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan"},
    }
