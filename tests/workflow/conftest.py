"""What the template tests share: the template as CloudFormation reads it, and the helpers that
read roles, statements and references out of it (tests/workflow/test_template*.py).

The helpers read the template as written (before the SAM transform): a function's `Policies` are
its role's inline statements, a state machine's likewise.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from deidflow.local.template import load_template

from tests.conftest import REPO

# The PHI side: what no research-side role may name (the queues are added by type where used).
PHI_SIDE = {
    "IngestBucket",
    "StatusTable",
    "MappingTable",
    "PseudonymKeySecret",
    "ObjectRefKeySecret",
    "DataKey",
    "MappingKey",
}
RESEARCH_KEY_ARN = {"Fn::GetAtt": ["ResearchKey", "Arn"]}
# The CloudWatch Logs delivery APIs (a state machine's logging) have no resource-level permissions.
LOG_DELIVERY = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


@pytest.fixture(scope="module")
def template() -> dict:
    return load_template(REPO / "template.yaml")


@pytest.fixture(scope="module")
def resources(template) -> dict:
    return template["Resources"]


def of_type(resources: dict, kind: str) -> dict:
    return {name: r for name, r in resources.items() if r["Type"] == kind}


def referenced(value: Any) -> set[str]:
    """Logical ids a value names: Ref, GetAtt, and ${Name} / ${Name.Attr} inside Sub."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= referenced(item)
    elif isinstance(value, dict):
        if "Ref" in value:
            found.add(value["Ref"])
        elif "Fn::GetAtt" in value:
            found.add(value["Fn::GetAtt"][0])
        elif "Fn::Sub" in value:
            text, variables = (value["Fn::Sub"], {}) if isinstance(value["Fn::Sub"], str) else value["Fn::Sub"]
            names = {m.split(".")[0] for m in re.findall(r"\$\{([^}!]+)\}", text)}
            found |= names - set(variables)
            found |= referenced(list(variables.values()))
        else:
            for item in value.values():
                found |= referenced(item)
    return {name for name in found if not name.startswith("AWS::")}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def branches(statement: dict) -> list[dict]:
    """A statement as granted: an Fn::If statement is both its branches (AWS::NoValue left out), so
    a conditional grant is checked as if its condition held."""
    if set(statement) == {"Fn::If"}:
        _, granted, otherwise = statement["Fn::If"]
        return [s for branch in (granted, otherwise) if branch != {"Ref": "AWS::NoValue"} for s in branches(branch)]
    return [statement]


def inline_statements(name: str, function: dict) -> Iterator[dict]:
    """The statements of a function's (or state machine's) SAM Policies. Only inline documents are
    allowed on research roles: a SAM policy template (S3ReadPolicy...) or a managed policy would
    grant what no statement here shows (S3ReadPolicy is the whole bucket, staging/ included)."""
    for policy in function["Properties"].get("Policies", []):
        assert isinstance(policy, dict) and set(policy) == {"Version", "Statement"}, (name, policy)
        for statement in policy["Statement"]:
            yield from branches(statement)


def roles(resources: dict) -> dict:
    """Everything the template gives a role to: functions, state machines, IAM roles."""
    return {
        **of_type(resources, "AWS::Serverless::Function"),
        **of_type(resources, "AWS::Serverless::StateMachine"),
        **of_type(resources, "AWS::IAM::Role"),
    }


def statements(resource: dict) -> list[dict]:
    """Inline statements of any function or role (SAM policy templates are looked at elsewhere)."""
    found = []
    for policy in resource["Properties"].get("Policies", []):
        document = policy.get("PolicyDocument", policy) if isinstance(policy, dict) else {}
        for statement in document.get("Statement", []):
            found += branches(statement)
    return found
