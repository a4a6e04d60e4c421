"""Read the SAM template, so local runs and tests build exactly what it declares.

CloudFormation's short tags (!Ref, !Sub, !GetAtt...) become {"Ref": ...} / {"Fn::Sub": ...} maps,
as CloudFormation itself reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class _TemplateLoader(yaml.SafeLoader):
    pass


def _short_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_TemplateLoader.add_multi_constructor("!", _short_tag)


def load_template(path: str | Path) -> dict[str, Any]:
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_TemplateLoader)


def table_definition(template: dict[str, Any], logical_id: str, table_name: str) -> dict[str, Any]:
    """create_table arguments for one AWS::DynamoDB::Table of the template (keys and indexes only)."""
    properties = template["Resources"][logical_id]["Properties"]
    definition: dict[str, Any] = {
        "TableName": table_name,
        "BillingMode": properties.get("BillingMode", "PAY_PER_REQUEST"),
        "KeySchema": properties["KeySchema"],
        "AttributeDefinitions": properties["AttributeDefinitions"],
    }
    if properties.get("GlobalSecondaryIndexes"):
        definition["GlobalSecondaryIndexes"] = properties["GlobalSecondaryIndexes"]
    return definition


def function_environment(
    template: dict[str, Any], resources: dict[str, str], stack_name: str, function: str | None = None
) -> dict[str, str]:
    """The environment the template gives every function (Globals), and `function`'s own on top,
    as a local run resolves it: a parameter at its default, a resource by its local name in
    `resources` (a Ref or a GetAtt of it alike), `${AWS::StackName}` as `stack_name`. The template
    stays the one place the Lambdas' settings are written."""
    parameters = template.get("Parameters", {})

    def resolve(value: Any) -> str:
        if isinstance(value, dict) and "Ref" in value:
            name = value["Ref"]
            if name in parameters:
                return str(parameters[name]["Default"])
            return resources[name]
        if isinstance(value, dict) and "Fn::Sub" in value and isinstance(value["Fn::Sub"], str):
            return value["Fn::Sub"].replace("${AWS::StackName}", stack_name)
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            return resources[value["Fn::GetAtt"][0]]
        if isinstance(value, dict) and "Fn::Join" in value:
            separator, parts = value["Fn::Join"]
            parts = parts if isinstance(parts, list) else [parts]
            return str(separator).join(p for p in (resolve(part) for part in parts) if p != "")
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ValueError(f"cannot resolve {value!r} locally")

    variables = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    if function is not None:
        own = template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
        variables.update(own)
    return {name: resolve(value) for name, value in variables.items()}
