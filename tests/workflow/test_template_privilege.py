"""Least privilege on the re-identification side, the research bucket and the Orthanc front door,
checked on the templates themselves (issue 14, item 6).

Each promise is a check function over the templates as CloudFormation reads them; the tests run
them on the real templates, and on deliberately broken copies (MUTATIONS), each of which some check
must catch: a check that a plausible mistake slips past is not a check.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from deidflow.local.template import load_template

from tests.conftest import REPO
from tests.workflow.conftest import as_list, roles, statements

PSEUDONYMISERS = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/deidflow/${AWS::StackName}/pseudonymisers/*"
HONEST_BROKER = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/deidflow/${AWS::StackName}/honest-broker/*"
WRITERS = {"DeidentifyHeaderFunction", "RedactBurnedInTextFunction"}
ROW_CHANGES = {
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:BatchWriteItem",
    "dynamodb:PartiQLUpdate",
    "dynamodb:PartiQLDelete",
}
OBJECT_WRITES = {"s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"}

Templates = dict[str, dict[str, Any]]  # "main" and "orthanc"


def load_templates() -> Templates:
    return {"main": load_template(REPO / "template.yaml"), "orthanc": load_template(REPO / "orthanc" / "template.yaml")}


def by_sid(document: dict) -> dict[str, dict]:
    return {s["Sid"]: s for s in document["Statement"]}


def sub(value: Any) -> Any:
    return value.get("Fn::Sub", value) if isinstance(value, dict) else value


# -- the checks ------------------------------------------------------------------------------------


def check_mapping_table_policy(t: Templates) -> None:
    """Only the honest broker reads, only the pseudonymisers create rows, nobody changes, removes or
    copies a row, and no put returns what it replaced."""
    policy = by_sid(t["main"]["Resources"]["MappingTable"]["Properties"]["ResourcePolicy"]["PolicyDocument"])
    reads = policy["OnlyTheHonestBrokerReads"]
    assert reads["Effect"] == "Deny" and reads["Principal"] == "*" and reads["Resource"] == "*"
    assert {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:BatchGetItem"} <= set(reads["Action"])
    assert {"dynamodb:PartiQLSelect", "dynamodb:ConditionCheckItem"} <= set(reads["Action"])
    assert [sub(v) for v in as_list(reads["Condition"]["ArnNotLike"]["aws:PrincipalArn"])] == [HONEST_BROKER]
    puts = policy["OnlyThePseudonymisersCreateRows"]
    assert puts["Effect"] == "Deny" and puts["Principal"] == "*" and "dynamodb:PutItem" in as_list(puts["Action"])
    assert [sub(v) for v in as_list(puts["Condition"]["ArnNotLike"]["aws:PrincipalArn"])] == [PSEUDONYMISERS]
    changes = policy["NobodyChangesOrRemovesRows"]
    assert changes["Effect"] == "Deny" and changes["Principal"] == "*" and "Condition" not in changes
    assert set(changes["Action"]) >= ROW_CHANGES
    returns = policy["NoPutReturnsWhatItReplaced"]
    assert returns["Effect"] == "Deny" and "Condition" in returns
    assert set(returns["Condition"]["StringEquals"]["dynamodb:ReturnValues"]) >= {"ALL_OLD", "UPDATED_OLD"}
    copies = policy["NoCopiesOfTheTable"]
    assert copies["Effect"] == "Deny" and "Condition" not in copies
    assert {"dynamodb:ExportTableToPointInTime", "dynamodb:RestoreTableToPointInTime"} <= set(copies["Action"])
    # No statement of this policy allows anything: IAM grants, this policy only takes away.
    assert all(s["Effect"] == "Deny" for s in policy.values())


def check_role_paths(t: Templates) -> None:
    """The resource policies name role paths: exactly the two writers sit under pseudonymisers/, only
    the honest-broker role under honest-broker/, and nothing else anywhere under deidflow/<stack>/."""
    resources = t["main"]["Resources"]
    paths: dict[str, str] = {}
    for name, resource in roles(resources).items():
        props = resource["Properties"]
        path = props.get("RolePath") or props.get("Path")
        if path is not None:
            paths[name] = sub(path)
    assert paths == {
        "DeidentifyHeaderFunction": "/deidflow/${AWS::StackName}/pseudonymisers/",
        "RedactBurnedInTextFunction": "/deidflow/${AWS::StackName}/pseudonymisers/",
        "HonestBrokerRole": "/deidflow/${AWS::StackName}/honest-broker/",
    }


def check_mapping_grants(t: Templates) -> None:
    """IAM: the writers may PutItem on the mapping table and nothing else of it; only the honest
    broker reads it; nobody is granted a change, a delete or a batch write of it."""
    resources = t["main"]["Resources"]
    for name, resource in roles(resources).items():
        for statement in statements(resource):
            if "MappingTable" not in json.dumps(statement.get("Resource")):
                continue
            actions = {a for a in as_list(statement["Action"]) if a.startswith("dynamodb:")}
            assert not actions & ROW_CHANGES and "dynamodb:*" not in actions, (name, actions)
            assert not any(a.startswith("dynamodb:PartiQL") for a in actions), (name, actions)
            if name in WRITERS:
                assert actions == {"dynamodb:PutItem"}, (name, actions)
            else:
                assert name == "HonestBrokerRole", name
                assert actions == {"dynamodb:GetItem", "dynamodb:Query", "dynamodb:BatchGetItem"}, actions


def check_key_secret(t: Templates) -> None:
    """The pseudonymisation key: read by the pseudonymisers and the honest broker only; never rotated
    and never put by a function; MappingKey is used only through DynamoDB and Secrets Manager."""
    resources = t["main"]["Resources"]
    [policy] = [r for r in resources.values() if r["Type"] == "AWS::SecretsManager::ResourcePolicy"]
    assert policy["Properties"]["SecretId"] == {"Ref": "PseudonymKeySecret"}
    assert policy["Properties"]["BlockPublicPolicy"] is True
    sids = by_sid(policy["Properties"]["ResourcePolicy"])
    reads = sids["OnlyThePseudonymisersAndTheHonestBrokerRead"]
    assert (
        reads["Effect"] == "Deny" and reads["Principal"] == "*" and reads["Action"] == "secretsmanager:GetSecretValue"
    )
    readers = [sub(v) for v in as_list(reads["Condition"]["ArnNotLike"]["aws:PrincipalArn"])]
    assert readers == [PSEUDONYMISERS, HONEST_BROKER]
    rotate = sids["NobodyRotatesTheKey"]
    assert rotate["Effect"] == "Deny" and "Condition" not in rotate
    assert "secretsmanager:RotateSecret" in rotate["Action"]
    # No function may put a value (re-key): seeding an existing key is an administrator's act.
    for name, resource in roles(resources).items():
        for s in statements(resource):
            if "PseudonymKeySecret" in json.dumps(s["Resource"]):
                assert as_list(s["Action"]) == ["secretsmanager:GetSecretValue"], name
    key = by_sid(resources["MappingKey"]["Properties"]["KeyPolicy"])
    direct = key["OnlyThroughTheMappingTableAndTheKeySecret"]
    assert direct["Effect"] == "Deny" and direct["Principal"] == "*"
    assert {"kms:Decrypt", "kms:GenerateDataKey*"} <= set(direct["Action"])
    services = [sub(v) for v in direct["Condition"]["StringNotEquals"]["kms:ViaService"]]
    assert services == ["dynamodb.${AWS::Region}.amazonaws.com", "secretsmanager.${AWS::Region}.amazonaws.com"]
    decrypts = key["TheKeySecretDecryptsForItsReadersOnly"]
    assert [sub(v) for v in as_list(decrypts["Condition"]["ArnNotLike"]["aws:PrincipalArn"])] == readers
    # Read by exactly those: the writers and the honest broker are granted it, nobody else.
    granted = {
        name
        for name, resource in roles(resources).items()
        for s in statements(resource)
        if "secretsmanager:GetSecretValue" in as_list(s["Action"]) and "PseudonymKeySecret" in json.dumps(s["Resource"])
    }
    assert granted == WRITERS | {"HonestBrokerRole"}


def check_honest_broker(t: Templates) -> None:
    """The role exists only for a named principal and trusts exactly it; the parameter refuses an
    account root and wildcards."""
    main = t["main"]
    role = main["Resources"]["HonestBrokerRole"]
    assert role.get("Condition") == "HasHonestBroker"
    assert main["Conditions"]["HasHonestBroker"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "HonestBrokerPrincipalArn"}, ""]}]
    }
    [trust] = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust == {
        "Effect": "Allow",
        "Principal": {"AWS": {"Ref": "HonestBrokerPrincipalArn"}},
        "Action": "sts:AssumeRole",
    }
    assert main["Outputs"]["HonestBrokerRoleArn"].get("Condition") == "HasHonestBroker"
    pattern = re.compile(main["Parameters"]["HonestBrokerPrincipalArn"]["AllowedPattern"])
    assert main["Parameters"]["HonestBrokerPrincipalArn"]["Default"] == ""
    for good in ["", "arn:aws:iam::123456789012:role/HonestBroker", "arn:aws:iam::123456789012:user/ops/alice"]:
        assert pattern.fullmatch(good), good
    for bad in [
        "*",
        "arn:aws:iam::123456789012:root",
        "arn:aws:iam::123456789012:role/*",
        "arn:aws:iam::*:role/HonestBroker",
        "123456789012",
        "arn:aws:sts::123456789012:assumed-role/x/y",
        "arn:aws:iam::123456789012:role/a b",
    ]:
        assert not pattern.fullmatch(bad), bad


def check_research_objects(t: Templates) -> None:
    """Research objects (studies/) are written by the header step and Publish alone, and deleted by them and by
    WithdrawSource (a deleted original's instance, never a put): IAM grants nobody else an object
    write there, and the bucket policy denies everyone else, whatever IAM says; the index step
    writes header sidecars under headers/ only, which WithdrawSource may delete too."""
    resources = t["main"]["Resources"]
    for name, resource in roles(resources).items():
        for statement in statements(resource):
            if not set(as_list(statement["Action"])) & (OBJECT_WRITES | {"s3:*", "s3:Put*", "s3:Delete*"}):
                continue
            for arn in as_list(statement["Resource"]):
                if "ResearchBucket" in json.dumps(arn):
                    prefix = sub(arn).removeprefix("${ResearchBucket.Arn}/")
                    allowed = {
                        # The header step publishes what needs no pixel scan itself (one PutObject).
                        "studies/*": {"DeidentifyHeaderFunction", "PublishFunction", "WithdrawSourceFunction"},
                        # IndexHeader deletes the staging copy it indexed; Quarantine and Park what a
                        # failed object left in staging.
                        "staging/*": WRITERS | {"IndexHeaderFunction", "QuarantineFunction", "ParkFunction"},
                        "headers/*": {"IndexHeaderFunction", "WithdrawSourceFunction"},
                    }
                    assert name in allowed.get(prefix, set()), (name, prefix)
                    if name == "WithdrawSourceFunction":  # it takes out, never puts
                        assert set(as_list(statement["Action"])) <= {"s3:DeleteObject", "s3:DeleteObjectVersion"}
    policy = by_sid(resources["ResearchBucketPolicy"]["Properties"]["PolicyDocument"])
    expected = {
        "OnlyPublishersAndWithdrawWriteResearchObjects": (
            "studies/*",
            ["DeidentifyHeaderFunctionRole", "PublishFunctionRole", "WithdrawSourceFunctionRole"],
        ),
        "OnlyTheWorkflowStepsWriteStaging": (
            "staging/*",
            [
                "RedactBurnedInTextFunctionRole",
                "IndexHeaderFunctionRole",
                "QuarantineFunctionRole",
                "ParkFunctionRole",
            ],
        ),
        "OnlyIndexHeaderAndWithdrawWriteHeaderSidecars": (
            "headers/*",
            ["IndexHeaderFunctionRole", "WithdrawSourceFunctionRole"],
        ),
    }
    for sid, (prefix, writers) in expected.items():
        statement = policy[sid]
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*", sid
        assert set(statement["Action"]) >= OBJECT_WRITES, sid
        assert sub(statement["Resource"]) == "${ResearchBucket.Arn}/" + prefix, sid
        named = as_list(statement["Condition"]["ArnNotEquals"]["aws:PrincipalArn"])
        assert named == [{"Fn::GetAtt": [w, "Arn"]} for w in writers], sid
    rest = policy["NothingElseIsWritten"]
    assert rest["Effect"] == "Deny" and "Condition" not in rest and set(rest["Action"]) >= OBJECT_WRITES
    assert [sub(r) for r in rest["NotResource"]] == [
        f"${{ResearchBucket.Arn}}/{p}" for p in ("studies/*", "staging/*", "headers/*")
    ]


def _orthanc_config(t: Templates) -> dict[str, Any]:
    text = sub(t["orthanc"]["Resources"]["OrthancConfig"]["Properties"]["Value"])
    return json.loads(re.sub(r"\$\{([^}]+)\}", r"<\1>", text))


def check_orthanc_front_door(t: Templates) -> None:
    """Pinned by digest; C-STORE from registered modalities only; store-only senders, one secret each."""
    orthanc = t["orthanc"]
    [container] = orthanc["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["Image"] == {"Fn::Sub": "${OrthancImageRepository}@${OrthancImageDigest}"}
    digest = orthanc["Parameters"]["OrthancImageDigest"]
    assert digest["AllowedPattern"] == "^sha256:[0-9a-f]{64}$" and "Default" not in digest
    config = _orthanc_config(t)
    assert config["DicomAlwaysAllowStore"] is False and config["DicomCheckModalityHost"] is True
    assert config["DicomModalitiesInDatabase"] is False and config["DicomWeb"]["EnableWado"] is False
    assert config["LuaScripts"] == ["/tmp/deidflow-http-filter.lua"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    filter_text = (REPO / "layers/deidflow/deidflow/data/orthanc_http_filter.lua").read_text()
    assert env["DEIDFLOW_HTTP_FILTER"] == filter_text
    assert container["Command"] == [(REPO / "orthanc/container_start.py").read_text()]
    senders = [
        r
        for r in orthanc["Resources"].values()
        if r["Type"] == "AWS::SecretsManager::Secret" and "Sender" in json.dumps(r)
    ]
    assert len(senders) == 8 and all(r.get("Condition", "").startswith("HasSender") for r in senders)
    assert not [s for s in container["Secrets"] if isinstance(s, dict) and s.get("Name") == "ORTHANC__REGISTERED_USERS"]


CHECKS: list[Callable[[Templates], None]] = [
    check_mapping_table_policy,
    check_role_paths,
    check_mapping_grants,
    check_key_secret,
    check_honest_broker,
    check_research_objects,
    check_orthanc_front_door,
]


@pytest.fixture(scope="module")
def templates() -> Templates:
    return load_templates()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_templates_keep_the_promise(templates: Templates, check: Callable[[Templates], None]) -> None:
    check(copy.deepcopy(templates))


# -- the mutations: each a plausible mistake, each must be caught ---------------------------------------


def _main(t: Templates) -> dict:
    return t["main"]["Resources"]


def _table_policy(t: Templates) -> list[dict]:
    return _main(t)["MappingTable"]["Properties"]["ResourcePolicy"]["PolicyDocument"]["Statement"]


def _drop_sid(statements_: list[dict], sid: str) -> None:
    statements_[:] = [s for s in statements_ if s["Sid"] != sid]


def _sid(statements_: list[dict], sid: str) -> dict:
    return next(s for s in statements_ if s["Sid"] == sid)


def _policy_of(t: Templates, function: str) -> list[dict]:
    return _main(t)[function]["Properties"]["Policies"][0]["Statement"]


def remove_the_read_deny(t: Templates) -> None:
    _drop_sid(_table_policy(t), "OnlyTheHonestBrokerReads")


def widen_the_reader_to_every_role(t: Templates) -> None:
    statement = _sid(_table_policy(t), "OnlyTheHonestBrokerReads")
    statement["Condition"]["ArnNotLike"]["aws:PrincipalArn"] = {
        "Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/*"
    }


def let_writers_update_rows(t: Templates) -> None:
    _drop_sid(_table_policy(t), "NobodyChangesOrRemovesRows")


def grant_update_item(t: Templates) -> None:
    for statement in _policy_of(t, "DeidentifyHeaderFunction"):
        if statement.get("Resource") == {"Fn::GetAtt": ["MappingTable", "Arn"]}:
            statement["Action"] = ["dynamodb:PutItem", "dynamodb:UpdateItem"]


def grant_batch_write(t: Templates) -> None:
    _policy_of(t, "RedactBurnedInTextFunction").append(
        {"Effect": "Allow", "Action": "dynamodb:BatchWriteItem", "Resource": {"Fn::GetAtt": ["MappingTable", "Arn"]}}
    )


def let_a_put_return_the_old_row(t: Templates) -> None:
    _drop_sid(_table_policy(t), "NoPutReturnsWhatItReplaced")


def put_publish_under_the_pseudonymisers_path(t: Templates) -> None:
    _main(t)["PublishFunction"]["Properties"]["RolePath"] = {"Fn::Sub": "/deidflow/${AWS::StackName}/pseudonymisers/"}


def let_every_role_read_the_key(t: Templates) -> None:
    [policy] = [r for r in _main(t).values() if r["Type"] == "AWS::SecretsManager::ResourcePolicy"]
    _drop_sid(policy["Properties"]["ResourcePolicy"]["Statement"], "OnlyThePseudonymisersAndTheHonestBrokerRead")


def grant_the_key_to_publish(t: Templates) -> None:
    _policy_of(t, "PublishFunction").append(
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "PseudonymKeySecret"}}
    )


def allow_direct_use_of_the_mapping_key(t: Templates) -> None:
    _drop_sid(
        _main(t)["MappingKey"]["Properties"]["KeyPolicy"]["Statement"], "OnlyThroughTheMappingTableAndTheKeySecret"
    )


def trust_the_account_root(t: Templates) -> None:
    [trust] = _main(t)["HonestBrokerRole"]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    trust["Principal"] = {"AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}


def create_the_broker_without_a_principal(t: Templates) -> None:
    del _main(t)["HonestBrokerRole"]["Condition"]


def accept_any_principal_parameter(t: Templates) -> None:
    t["main"]["Parameters"]["HonestBrokerPrincipalArn"]["AllowedPattern"] = "^.*$"


def give_index_put_object_on_studies(t: Templates) -> None:
    _policy_of(t, "IndexHeaderFunction").append(
        {"Effect": "Allow", "Action": "s3:PutObject", "Resource": {"Fn::Sub": "${ResearchBucket.Arn}/studies/*"}}
    )


def remove_the_research_object_deny(t: Templates) -> None:
    _drop_sid(
        _main(t)["ResearchBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"],
        "OnlyPublishersAndWithdrawWriteResearchObjects",
    )


def except_index_from_the_research_object_deny(t: Templates) -> None:
    statement = _sid(
        _main(t)["ResearchBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"],
        "OnlyPublishersAndWithdrawWriteResearchObjects",
    )
    statement["Condition"]["ArnNotEquals"]["aws:PrincipalArn"] = [
        {"Fn::GetAtt": ["PublishFunctionRole", "Arn"]},
        {"Fn::GetAtt": ["IndexHeaderFunctionRole", "Arn"]},
    ]


def give_withdraw_put_object_on_studies(t: Templates) -> None:
    for statement in _policy_of(t, "WithdrawSourceFunction"):
        if "s3:DeleteObjectVersion" in as_list(statement["Action"]):
            statement["Action"] = [*as_list(statement["Action"]), "s3:PutObject"]


def unpin_the_image(t: Templates) -> None:
    [container] = t["orthanc"]["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    container["Image"] = {"Fn::Sub": "${OrthancImageRepository}:latest"}


def accept_a_tag_for_the_digest(t: Templates) -> None:
    t["orthanc"]["Parameters"]["OrthancImageDigest"]["AllowedPattern"] = "^.+$"


def let_any_modality_store(t: Templates) -> None:
    value = t["orthanc"]["Resources"]["OrthancConfig"]["Properties"]["Value"]
    value["Fn::Sub"] = value["Fn::Sub"].replace('"DicomAlwaysAllowStore": false', '"DicomAlwaysAllowStore": true')


def let_senders_read_back(t: Templates) -> None:
    [container] = t["orthanc"]["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    for variable in container["Environment"]:
        if variable["Name"] == "DEIDFLOW_HTTP_FILTER":
            variable["Value"] = variable["Value"].replace("return stores(method, uri)", "return true")


def share_one_users_secret(t: Templates) -> None:
    [container] = t["orthanc"]["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    container["Secrets"].append({"Name": "ORTHANC__REGISTERED_USERS", "ValueFrom": {"Ref": "SenderSecret1"}})


# Each mutation, and the check that must catch it.
MUTATIONS: list[tuple[Callable[[Templates], None], Callable[[Templates], None]]] = [
    (remove_the_read_deny, check_mapping_table_policy),
    (widen_the_reader_to_every_role, check_mapping_table_policy),
    (let_writers_update_rows, check_mapping_table_policy),
    (grant_update_item, check_mapping_grants),
    (grant_batch_write, check_mapping_grants),
    (let_a_put_return_the_old_row, check_mapping_table_policy),
    (put_publish_under_the_pseudonymisers_path, check_role_paths),
    (let_every_role_read_the_key, check_key_secret),
    (grant_the_key_to_publish, check_key_secret),
    (allow_direct_use_of_the_mapping_key, check_key_secret),
    (trust_the_account_root, check_honest_broker),
    (create_the_broker_without_a_principal, check_honest_broker),
    (accept_any_principal_parameter, check_honest_broker),
    (give_index_put_object_on_studies, check_research_objects),
    (remove_the_research_object_deny, check_research_objects),
    (except_index_from_the_research_object_deny, check_research_objects),
    (give_withdraw_put_object_on_studies, check_research_objects),
    (unpin_the_image, check_orthanc_front_door),
    (accept_a_tag_for_the_digest, check_orthanc_front_door),
    (let_any_modality_store, check_orthanc_front_door),
    (let_senders_read_back, check_orthanc_front_door),
    (share_one_users_secret, check_orthanc_front_door),
]


@pytest.mark.parametrize(("mutation", "check"), MUTATIONS, ids=[m.__name__ for m, _ in MUTATIONS])
def test_each_broken_variant_is_caught(
    templates: Templates, mutation: Callable[[Templates], None], check: Callable[[Templates], None]
) -> None:
    broken = copy.deepcopy(templates)
    mutation(broken)
    assert broken != templates, "the mutation changed nothing"
    # A missing statement surfaces as a KeyError or StopIteration of the lookup; anything else is an assertion.
    with pytest.raises((AssertionError, KeyError, StopIteration)):
        check(broken)
