"""Security properties of the Orthanc front door (orthanc/template.yaml), checked without AWS.

The template is read with a tiny YAML loader that turns CloudFormation short tags (!Ref, !Sub, ...)
into their long forms, so the tests need only PyYAML.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

TEMPLATE = Path(__file__).resolve().parents[2] / "orthanc" / "template.yaml"


class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation's short-form intrinsic functions."""


def _intrinsic(loader: yaml.SafeLoader, tag_suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if tag_suffix == "Ref":
        return {"Ref": value}
    if tag_suffix == "Condition":
        return {"Condition": value}
    if tag_suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{tag_suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def _resources(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == type_}


def _one(template: dict[str, Any], type_: str) -> dict[str, Any]:
    found = _resources(template, type_)
    assert len(found) == 1, f"expected exactly one {type_}, found {sorted(found)}"
    return next(iter(found.values()))


def _sub_text(value: Any) -> str:
    """The template string of a Fn::Sub (either form)."""
    sub = value["Fn::Sub"]
    return sub if isinstance(sub, str) else sub[0]


def _orthanc_config(template: dict[str, Any]) -> dict[str, Any]:
    """Orthanc's JSON configuration from the SSM parameter, with ${...} placeholders filled in."""
    text = _sub_text(template["Resources"]["OrthancConfig"]["Properties"]["Value"])
    return json.loads(re.sub(r"\$\{([^}]+)\}", r"<\1>", text))


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for policy in role["Properties"]["Policies"] for s in policy["PolicyDocument"]["Statement"]]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


SLOTS = 8  # sender slots (SendingSystems)


def _unconditional(items: list[Any]) -> list[Any]:
    """A list whose `Fn::If [cond, x, AWS::NoValue]` items are read as x (their condition holding)."""
    found = []
    for item in items:
        if isinstance(item, dict) and set(item) == {"Fn::If"}:
            _, granted, otherwise = item["Fn::If"]
            assert otherwise == {"Ref": "AWS::NoValue"}, item
            item = granted
        found.append(item)
    return found


# --------------------------------------------------------------------------- network exposure


def test_tasks_run_in_private_subnets_without_public_ip(template):
    service = _one(template, "AWS::ECS::Service")["Properties"]
    vpc_config = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert vpc_config["AssignPublicIp"] == "DISABLED"
    subnets = json.dumps(vpc_config["Subnets"])
    assert "PrivateSubnet" in subnets
    assert "PublicSubnet" not in subnets
    assert service["LaunchType"] == "FARGATE"


def test_created_subnets_never_auto_assign_public_ips(template):
    for name, subnet in _resources(template, "AWS::EC2::Subnet").items():
        assert subnet["Properties"]["MapPublicIpOnLaunch"] is False, name


def test_only_the_alb_reaches_the_orthanc_http_port(template):
    ingress = _resources(template, "AWS::EC2::SecurityGroupIngress")
    to_http = [
        r["Properties"] for r in ingress.values() if r["Properties"]["FromPort"] <= 8042 <= r["Properties"]["ToPort"]
    ]
    assert to_http, "no ingress rule for 8042"
    for rule in to_http:
        assert rule["GroupId"] == {"Ref": "TaskSecurityGroup"}
        assert rule["SourceSecurityGroupId"] == {"Ref": "AlbSecurityGroup"}
        assert "CidrIp" not in rule
    task_sg = template["Resources"]["TaskSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in task_sg, "task ingress must come only from the dedicated rules"


def test_database_accepts_only_the_tasks(template):
    ingress = [
        r["Properties"]
        for r in _resources(template, "AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Ref": "DbSecurityGroup"}
    ]
    assert ingress == [
        {
            "Description": ingress[0]["Description"],
            "GroupId": {"Ref": "DbSecurityGroup"},
            "IpProtocol": "tcp",
            "FromPort": 5432,
            "ToPort": 5432,
            "SourceSecurityGroupId": {"Ref": "TaskSecurityGroup"},
        }
    ]


def test_vpc_flow_logs_cover_created_or_existing_vpc(template):
    flow_log = _one(template, "AWS::EC2::FlowLog")
    assert "Condition" not in flow_log
    props = flow_log["Properties"]
    assert props["TrafficType"] == "ALL"
    assert props["ResourceId"] == {"Fn::If": ["CreateVpc", {"Ref": "Vpc"}, {"Ref": "VpcId"}]}


def test_dicom_nlb_is_off_by_default(template):
    assert template["Parameters"]["EnableDicomNlb"]["Default"] == "false"
    assert template["Resources"]["Nlb"]["Condition"] == "EnableNlb"
    assert template["Resources"]["DicomTlsListener"]["Properties"]["Protocol"] == "TLS"


# --------------------------------------------------------------------------- load balancer


def test_https_listener_uses_certificate_and_tls12_plus_policy(template):
    https = template["Resources"]["HttpsListener"]["Properties"]
    assert https["Port"] == 443
    assert https["Protocol"] == "HTTPS"
    assert https["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert https["SslPolicy"] == {"Ref": "AlbSslPolicy"}
    policy = template["Parameters"]["AlbSslPolicy"]
    for allowed in [policy["Default"], *policy["AllowedValues"]]:
        assert allowed.startswith("ELBSecurityPolicy-TLS13-1-"), allowed


def test_port_80_only_redirects_to_https(template):
    http = template["Resources"]["HttpRedirectListener"]["Properties"]
    assert http["Port"] == 80
    (action,) = http["DefaultActions"]
    assert action["Type"] == "redirect"
    assert action["RedirectConfig"]["Protocol"] == "HTTPS"
    assert action["RedirectConfig"]["Port"] == "443"
    assert action["RedirectConfig"]["StatusCode"] == "HTTP_301"
    listeners = _resources(template, "AWS::ElasticLoadBalancingV2::Listener")
    alb_listeners = [r for r in listeners.values() if r["Properties"]["LoadBalancerArn"] == {"Ref": "Alb"}]
    assert sorted(r["Properties"]["Protocol"] for r in alb_listeners) == ["HTTP", "HTTPS"]


def test_alb_drops_invalid_headers_and_logs_access(template):
    attrs = {a["Key"]: a["Value"] for a in template["Resources"]["Alb"]["Properties"]["LoadBalancerAttributes"]}
    assert attrs["routing.http.drop_invalid_header_fields.enabled"] == "true"
    assert attrs["access_logs.s3.enabled"] == "true"


def test_alb_health_check_expects_orthanc_to_refuse_anonymous_callers(template):
    tg = template["Resources"]["HttpTargetGroup"]["Properties"]
    assert tg["Port"] == 8042
    assert tg["Matcher"] == {"HttpCode": "401"}


# --------------------------------------------------------------------------- image and container


def test_the_image_is_pinned_by_digest(template):
    """A digest names exactly one image: a moved tag or a rewritten registry cannot change what runs.
    No default: nothing here could read a real digest, and a made-up one is worse than none."""
    param = template["Parameters"]["OrthancImageDigest"]
    assert "Default" not in param
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.fullmatch("sha256:" + "0123456789abcdef" * 4)
    for floating in ["latest", "25.12.3", "sha256:", "sha256:" + "A" * 64, "sha512:" + "0" * 128, ""]:
        assert not pattern.fullmatch(floating), floating
    (container,) = _one(template, "AWS::ECS::TaskDefinition")["Properties"]["ContainerDefinitions"]
    assert container["Image"] == {"Fn::Sub": "${OrthancImageRepository}@${OrthancImageDigest}"}
    assert template["Parameters"]["OrthancImageRepository"]["Default"] == "orthancteam/orthanc"
    assert not [name for name in template["Parameters"] if "Tag" in name]


def test_secrets_come_from_secrets_manager_and_config_from_ssm(template):
    (container,) = _one(template, "AWS::ECS::TaskDefinition")["Properties"]["ContainerDefinitions"]
    secrets = {s["Name"]: s["ValueFrom"] for s in _unconditional(container["Secrets"])}
    assert secrets["ORTHANC__POSTGRESQL__PASSWORD"] == {"Fn::Sub": "${DbSecret}:password::"}
    assert "ORTHANC__REGISTERED_USERS" not in secrets  # built from one secret per sender at start
    for slot in range(1, SLOTS + 1):
        assert secrets[f"DEIDFLOW_SENDER_{slot}"] == {"Ref": f"SenderSecret{slot}"}
    assert "${OrthancConfig}" in _sub_text(secrets["ORTHANC_JSON"])
    env_names = {e["Name"] for e in container["Environment"]}
    assert not any("PASSWORD" in n or "REGISTERED_USERS" in n or "SENDER" in n for n in env_names)
    for name in ("DbSecret", *(f"SenderSecret{slot}" for slot in range(1, SLOTS + 1))):
        props = template["Resources"][name]["Properties"]
        assert "GenerateSecretString" in props and "SecretString" not in props, name


def test_no_plaintext_password_anywhere(template):
    text = TEMPLATE.read_text()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if re.search(r"pass(word)?|secret|registeredusers", key, re.IGNORECASE) and isinstance(value, str):
                    assert "{{resolve:secretsmanager:" in value or key in {"SecretStringTemplate"}, f"{path}.{key}"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(template["Resources"], "Resources")
    db = template["Resources"]["Db"]["Properties"]
    assert _sub_text(db["MasterUserPassword"]).startswith("{{resolve:secretsmanager:${DbSecret}")
    config = _orthanc_config(template)
    assert "Password" not in config["PostgreSQL"]
    assert "RegisteredUsers" not in config
    assert not re.search(r'"(Password|RegisteredUsers)"\s*:', text)


# --------------------------------------------------------------------------- database


def test_database_encrypted_private_and_snapshotted(template):
    db = template["Resources"]["Db"]
    props = db["Properties"]
    assert props["StorageEncrypted"] is True
    assert props["PubliclyAccessible"] is False
    assert db["DeletionPolicy"] == "Snapshot"
    assert db["UpdateReplacePolicy"] == "Snapshot"
    assert props["MultiAZ"] == {"Ref": "DbMultiAz"}
    assert props["BackupRetentionPeriod"] == {"Ref": "DbBackupRetentionDays"}
    assert props["DBSubnetGroupName"] == {"Ref": "DbSubnetGroup"}


def test_database_requires_tls_and_orthanc_uses_it(template):
    params = template["Resources"]["DbParameterGroup"]["Properties"]["Parameters"]
    assert params["rds.force_ssl"] == "1"
    pg = _orthanc_config(template)["PostgreSQL"]
    assert pg["EnableSsl"] is True  # the plugin's synonym for sslmode=require
    assert pg["EnableIndex"] is True
    assert pg["EnableStorage"] is False
    assert pg["Lock"] is False  # several tasks share the index


# --------------------------------------------------------------------------- IAM


def test_task_role_s3_access_is_limited_to_the_ingest_prefix(template):
    statements = _statements(template["Resources"]["TaskRole"])
    object_actions = {"s3:PutObject", "s3:GetObject", "s3:DeleteObject"}
    seen: set[str] = set()
    for stmt in statements:
        assert stmt["Effect"] == "Allow"
        actions = set(_as_list(stmt["Action"]))
        resources = _as_list(stmt["Resource"])
        assert "*" not in resources and all("*" not in a for a in actions), stmt
        if actions & object_actions:
            assert actions <= object_actions, stmt
            assert resources == [{"Fn::Sub": "${IngestBucketArn}/${IngestPrefix}*"}]
            seen |= actions
        elif "s3:ListBucket" in actions:
            assert actions == {"s3:ListBucket"}
            assert resources == [{"Ref": "IngestBucketArn"}]
            assert stmt["Condition"]["StringLike"]["s3:prefix"] == {"Fn::Sub": "${IngestPrefix}*"}
            seen.add("s3:ListBucket")
        else:
            assert actions == {"kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"}, stmt
            assert resources == [{"Ref": "IngestKmsKeyArn"}]
            seen |= actions
    assert seen == object_actions | {"s3:ListBucket", "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"}


def test_execution_role_reads_only_this_stacks_secrets_and_parameter(template):
    statements = _statements(template["Resources"]["ExecutionRole"])
    for stmt in statements:
        resources = _as_list(stmt["Resource"])
        assert "*" not in resources, stmt
    by_sid = {s["Sid"]: s for s in statements}
    assert _unconditional(by_sid["ReadOrthancSecrets"]["Resource"]) == [
        {"Ref": "DbSecret"},
        *({"Ref": f"SenderSecret{slot}"} for slot in range(1, SLOTS + 1)),
    ]
    assert "${OrthancConfig}" in _sub_text(by_sid["ReadOrthancConfig"]["Resource"])


def test_ingest_prefix_parameter(template):
    param = template["Parameters"]["IngestPrefix"]
    assert param["Default"] == "orthanc/"
    pattern = re.compile(param["AllowedPattern"])
    assert pattern.fullmatch("orthanc/")
    assert pattern.fullmatch("pacs/orthanc/")
    for bad in ["", "/", "orthanc", "/orthanc/", "orthanc//", "*"]:
        assert not pattern.fullmatch(bad), bad


# --------------------------------------------------------------------------- S3 plugin settings the pipeline relies on


def test_s3_plugin_writes_plain_dicom_under_the_prefix(template):
    config = _orthanc_config(template)
    s3 = config["AwsS3Storage"]
    assert s3["BucketName"] == "<IngestBucketName>"
    assert s3["RootPath"] == "<IngestPrefix>"
    assert s3["StorageEncryption"] == {"Enable": False}  # client-side encryption off (.enc objects)
    assert s3["StorageStructure"] == "flat"  # <RootPath><uuid>.dcm
    assert s3["HybridMode"] == "Disabled"
    assert "AccessKey" not in s3 and "SecretKey" not in s3  # task role credentials only
    assert config["StorageCompression"] is False  # zlib attachments are not DICOM
    assert "IngestTranscoding" not in config  # the pipeline must see the bytes as received
    assert "AdvancedStorage" not in config  # would change the object naming scheme
    assert config["AuthenticationEnabled"] is True
    assert config["DicomWeb"]["Enable"] is True


# --------------------------------------------------------------------------- logs and parent wiring


def test_logs_are_kms_encrypted_with_retention_and_insights_on(template):
    log_group = _one(template, "AWS::Logs::LogGroup")["Properties"]
    assert log_group["KmsKeyId"] == {"Fn::GetAtt": ["OrthancKey", "Arn"]}
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}
    cluster = _one(template, "AWS::ECS::Cluster")["Properties"]
    assert {"Name": "containerInsights", "Value": "enabled"} in cluster["ClusterSettings"]


def test_parent_parameters_and_outputs(template):
    for name in ["IngestBucketName", "IngestBucketArn", "IngestKmsKeyArn", "IngestPrefix", "CertificateArn"]:
        assert name in template["Parameters"], name
    assert template["Parameters"]["VpcId"]["Default"] == ""
    for name in ["OrthancUrl", "DicomEndpoint", "ServiceName", "ClusterName"]:
        assert name in template["Outputs"], name


# --------------------------------------------------------------------------- senders, store-only, modalities

REPO = TEMPLATE.parents[1]
HTTP_FILTER = REPO / "layers" / "deidflow" / "deidflow" / "data" / "orthanc_http_filter.lua"
CONTAINER_START = REPO / "orthanc" / "container_start.py"


def _container(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = _one(template, "AWS::ECS::TaskDefinition")["Properties"]["ContainerDefinitions"]
    return container


def _start_module() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("orthanc_container_start", CONTAINER_START)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_container_runs_the_start_script_and_the_filter_of_this_repository(template):
    """The template carries both texts inline (a task definition cannot read the repository): they
    must be these files byte for byte, or the cloud would run something no test has seen."""
    container = _container(template)
    assert container["EntryPoint"] == ["python3", "-c"]
    assert container["Command"] == [CONTAINER_START.read_text()], "run python tools/sync_orthanc_inline.py"
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    # The local Orthanc loads this file (tests/integration/test_local_orthanc.py).
    assert env["DEIDFLOW_HTTP_FILTER"] == HTTP_FILTER.read_text(), "run python tools/sync_orthanc_inline.py"
    assert env["DEIDFLOW_MODALITIES"] == {"Ref": "DicomModalities"}
    start = _start_module()
    assert start.ENTRYPOINT == ["/docker-entrypoint.sh", "/tmp/orthanc.json"]  # the image's ENTRYPOINT + CMD
    assert _orthanc_config(template)["LuaScripts"] == [start.FILTER_PATH]
    # The health probe logs in as its own user (GET /system and /changes only), never as a sender.
    assert container["HealthCheck"]["Command"][-1] == f"--user={start.PROBE_USER}"


def test_one_generated_secret_per_sending_system(template):
    params = template["Parameters"]
    pattern = re.compile(params["SendingSystems"]["AllowedPattern"])
    assert pattern.fullmatch(params["SendingSystems"]["Default"])
    assert pattern.fullmatch(",".join(f"site{i}" for i in range(SLOTS)))
    assert pattern.fullmatch("pacs,-,ct-gateway")  # a retired slot keeps the others' secrets
    for bad in ["", ",".join(f"site{i}" for i in range(SLOTS + 1)), "Pacs", "pacs,", "a", '"x"', "pacs;rm"]:
        assert not pattern.fullmatch(bad), bad
    secrets = _resources(template, "AWS::SecretsManager::Secret")
    assert set(secrets) == {"DbSecret", *(f"SenderSecret{slot}" for slot in range(1, SLOTS + 1))}
    for slot in range(1, SLOTS + 1):
        secret = secrets[f"SenderSecret{slot}"]
        assert secret["Condition"] == f"HasSender{slot}"
        generated = secret["Properties"]["GenerateSecretString"]
        assert generated["GenerateStringKey"] == "password" and generated["ExcludePunctuation"] is True
        assert f"[{slot - 1}," in json.dumps(generated["SecretStringTemplate"]).replace(" ", "")
        assert template["Outputs"][f"Sender{slot}SecretArn"]["Condition"] == f"HasSender{slot}"


def test_dicom_accepts_only_registered_modalities_from_their_address(template):
    config = _orthanc_config(template)
    assert config["DicomAlwaysAllowStore"] is False
    assert config["DicomCheckModalityHost"] is True and config["DicomCheckCalledAet"] is True
    for service in ("Echo", "Find", "FindWorklist", "Get", "Move"):
        assert config[f"DicomAlwaysAllow{service}"] is False, service
    assert config["DicomModalitiesInDatabase"] is False  # nobody adds one over REST either
    assert "DicomModalities" not in config  # from DicomModalities, by the start script
    attributes = {
        a["Key"]: a["Value"] for a in template["Resources"]["DicomTargetGroup"]["Properties"]["TargetGroupAttributes"]
    }
    assert attributes["preserve_client_ip.enabled"] == "true"  # else Orthanc sees the NLB's address
    pattern = re.compile(template["Parameters"]["DicomModalities"]["AllowedPattern"])
    assert pattern.fullmatch("") and pattern.fullmatch("CT1@10.0.0.5,MR_2@10.1.2.3:11112")
    for bad in ["CT1", "ct1@10.0.0.5", "CT1@host.example", "CT1@10.0.0.5,", '"}, "X": {"']:
        assert not pattern.fullmatch(bad), bad


def test_nothing_sent_can_be_read_back_over_http(template):
    config = _orthanc_config(template)
    assert config["DicomWeb"]["EnableWado"] is False  # WADO-URI off; the filter refuses the rest
    assert config["ExecuteLuaEnabled"] is False
    assert "RegisteredUsers" not in config and "DeidflowHttpFilter" not in config  # the start script's


def test_the_start_script_builds_users_modalities_and_the_filter_section():
    start = _start_module()
    environ = {
        "DEIDFLOW_SENDER_1": json.dumps({"username": "pacs", "password": "A" * 32}),
        "DEIDFLOW_SENDER_3": json.dumps({"username": "ct-gateway", "password": "b1" * 16}),
        "DEIDFLOW_MODALITIES": "CT1@10.0.0.5,MR_2@10.1.2.3:11112",
    }
    config = start.configuration(environ)
    users = config["RegisteredUsers"]
    assert set(users) == {"pacs", "ct-gateway", start.PROBE_USER}
    assert users["pacs"] == "A" * 32 and len(users[start.PROBE_USER]) == 48
    assert start.configuration(environ)["RegisteredUsers"][start.PROBE_USER] != users[start.PROBE_USER]
    assert config["DeidflowHttpFilter"] == {
        "Senders": ["ct-gateway", "pacs"],
        "Monitors": [start.PROBE_USER],
        "MonitorPaths": ["/system", "/changes"],
        "Readers": [],
        "DicomWebRoot": "/dicom-web/",
    }
    ct = config["DicomModalities"]["ct1"]
    assert (ct["AET"], ct["Host"], ct["Port"], ct["AllowStore"], ct["AllowEcho"]) == (
        "CT1",
        "10.0.0.5",
        104,
        True,
        True,
    )
    assert not any(v for k, v in ct.items() if k.startswith("Allow") and k not in ("AllowStore", "AllowEcho"))
    assert config["DicomModalities"]["mr_2"]["Port"] == 11112


@pytest.mark.parametrize(
    "environ",
    [
        {},  # no sender at all
        {"DEIDFLOW_SENDER_1": "not json"},
        {"DEIDFLOW_SENDER_1": json.dumps({"username": "deidflow-probe", "password": "A" * 32})},
        {"DEIDFLOW_SENDER_1": json.dumps({"username": "pacs", "password": "short"})},
        {"DEIDFLOW_SENDER_1": json.dumps({"username": "pacs", "password": "$" + "A" * 31})},
        {
            "DEIDFLOW_SENDER_1": json.dumps({"username": "pacs", "password": "A" * 32}),
            "DEIDFLOW_SENDER_2": json.dumps({"username": "pacs", "password": "B" * 32}),
        },
        {
            "DEIDFLOW_SENDER_1": json.dumps({"username": "pacs", "password": "A" * 32}),
            "DEIDFLOW_MODALITIES": "CT1@host",
        },
    ],
)
def test_the_start_script_refuses_what_it_cannot_start_safely_with(environ):
    start = _start_module()
    with pytest.raises(start.StartError) as refused:
        start.configuration(environ)
    assert "A" * 32 not in str(refused.value) and "$" not in str(refused.value)  # names, never values
