"""A deploy rehearsal on this machine: template.yaml packaged, translated and created as a stack on
moto's CloudFormation, so that local runs and tests use what the stack created. Nothing here
deploys; it needs the 'local' extra (moto, aws-sam-translator) and runs inside an active moto mock.

The steps are those of `sam package && sam deploy`:

1. **Package** (`package`): every local path the template points at becomes an S3 location in the
   artifacts bucket, as `sam package` rewrites it: a function's `CodeUri` and the layer's
   `ContentUri` become `s3://bucket/<md5>` of a zip of the folder (the real files, `__pycache__`
   left out; the layer is zipped from its source, where `sam build` would first install its
   dependencies: moto stores the zip and never runs it, the handlers run in-process from the
   checkout), a state machine's `DefinitionUri` becomes `{Bucket, Key}` of the ASL file, and the
   Orthanc application's `Location` becomes the https URL of its uploaded template. A path that
   does not exist fails here, as it fails `sam package`.
2. **Translate** (`translate`): the SAM transform by aws-sam-translator's `Translator`, the one
   CloudFormation runs (called as its `transform()` calls it), with a managed-policy loader that
   answers offline (every managed policy this template gets is added by ARN, so the loader is
   never asked; if a template names one, the rehearsal says so instead of calling IAM).
3. **Check references** the way CloudFormation validates a template: every Ref, GetAtt and
   `${...}` in Fn::Sub names a resource, a parameter or a pseudo parameter, else CloudFormation's
   "Unresolved resource dependencies" error, with the property that holds it. moto does not
   check this (a dangling Ref is a Python KeyError deep in moto).
4. **Create the stack** on moto's CloudFormation with parameter values for local use, wait for
   CREATE_COMPLETE, read its outputs and describe_stack_resources.

What moto's CloudFormation (moto 5.x) cannot do, and what the rehearsal does instead:

- **Resource types it does not model** are skipped by moto without an error (a warning), a Ref to
  one resolves to nothing and the property holding it silently disappears (an environment
  variable naming a secret, say), and a GetAtt of one fails the outputs. The list is read from
  moto's own model map at run time (`modelled_types`); for this template it is
  AWS::SecretsManager::Secret, AWS::Pipes::Pipe, AWS::CloudWatch::Alarm, AWS::SNS::Subscription,
  AWS::S3::BucketPolicy, AWS::SQS::QueuePolicy, AWS::Lambda::EventInvokeConfig,
  AWS::ApiGatewayV2::Api and ::Stage, AWS::Cognito::UserPool, ::UserPoolClient, ::UserPoolDomain,
  ::UserPoolGroup and ::UserPoolResourceServer, and AWS::CloudFront::Distribution,
  ::OriginAccessControl and ::ResponseHeadersPolicy. Each is **stubbed**: taken out of the
  template moto gets, with every reference to it replaced by a stand-in value (Ref:
  `<stack>-<LogicalId>`; GetAtt Arn: an ARN ending in it; another attribute: `<stack>-<LogicalId>-<Attr>`),
  so that its dependents and the outputs still resolve. Secrets are then created for real under
  that name, with a value generated as their GenerateSecretString says (the stand-in is the
  secret's name where CloudFormation's Ref gives its ARN; Secrets Manager takes either as a
  SecretId). The others are not created: the Pipe is played by `LocalWorkflow.run_pipe`; alarms,
  the alarm subscription, bucket and queue policies, the API, Cognito and CloudFront are not
  used by the local workflow (and moto enforces no policy).
- **Properties its models ignore** and that the local run depends on are applied after the stack
  is created, with their values resolved by moto's CloudFormation itself (each intrinsic becomes
  a hidden output of the stack, read back with describe_stacks):
  an S3 bucket's `VersioningConfiguration`, `ObjectLockConfiguration` and
  `NotificationConfiguration` (moto's bucket keeps only encryption and tags); a state machine's
  `DefinitionS3Location`, `DefinitionSubstitutions` and `StateMachineType` (moto's model reads
  only an inline definition, and creates the machine in a backend that does not execute it when
  moto is told to run state machines: the rehearsal creates it again, same name and so the same
  ARN, from the packaged definition with the substitutions resolved from the stack's resources).
  Left out, because moto neither enforces nor uses them: lifecycle rules, public access blocks,
  ownership controls, access logging, SSE settings of tables and queues, TTL, point-in-time
  recovery, reserved concurrency, log groups' retention.
- moto parses a template body with PyYAML's pure-Python loader before it tries JSON (about two
  seconds for this one); the body is sent as JSON behind a tab, which YAML refuses at once and
  JSON accepts, so moto falls back to `json.loads` (0.1 s).

`rehearse()` takes about half a second on top of a cached `prepare()` (packaging and the SAM
transform, once per process and template).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import io
import json
import re
import secrets
import string
import time
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .template import load_template

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
STACK_NAME = "deidflow-local"
ARTIFACT_BUCKET = "deidflow-local-artifacts"  # where `sam package` would upload (its managed bucket)
TEMPLATE_PATH = Path("template.yaml")
PSEUDO_PARAMETERS = frozenset(
    {
        "AWS::AccountId",
        "AWS::NotificationARNs",
        "AWS::NoValue",
        "AWS::Partition",
        "AWS::Region",
        "AWS::StackId",
        "AWS::StackName",
        "AWS::URLSuffix",
    }
)
_HIDDEN_OUTPUT = "RehearsalValue"  # prefix of the outputs that carry values for the completion step
_SKIPPED_IN_ZIPS = ("__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


class RehearsalError(Exception):
    """The template would not deploy (or moto could not create what the local run needs)."""


# -- 1. package --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Packaged:
    """The template as `sam package` leaves it, and the artifacts it uploads (key -> bytes)."""

    template: dict[str, Any]
    artifacts: dict[str, bytes]


def zip_folder(folder: Path) -> bytes:
    """A deterministic zip of a folder's files (sorted, fixed timestamps, no caches)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder)
            if any(part in _SKIPPED_IN_ZIPS or part.endswith(".egg-info") for part in relative.parts):
                continue
            if path.suffix == ".pyc":
                continue
            info = zipfile.ZipInfo(relative.as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


def package(project: Path, template: dict[str, Any], *, bucket: str = ARTIFACT_BUCKET) -> Packaged:
    """`sam package`: local paths of the template -> S3 locations in `bucket` (keys: the content's
    MD5, as sam names them)."""
    packaged = copy.deepcopy(template)
    artifacts: dict[str, bytes] = {}

    def upload(data: bytes, suffix: str = "") -> str:
        key = hashlib.md5(data, usedforsecurity=False).hexdigest() + suffix
        artifacts[key] = data
        return key

    def local(logical_id: str, prop: str, value: Any, *, folder: bool) -> Path | None:
        if not isinstance(value, str) or value.startswith(("s3://", "https://")):
            return None  # already an S3 location (or an intrinsic): sam package leaves it
        path = project / value
        if not (path.is_dir() if folder else path.is_file()):
            kind = "folder" if folder else "file"
            raise RehearsalError(f"{logical_id}.{prop}: no {kind} {value} in {project} (sam package would fail)")
        return path

    for logical_id, resource in packaged.get("Resources", {}).items():
        kind, props = resource.get("Type"), resource.get("Properties", {})
        if kind == "AWS::Serverless::Function" and (
            path := local(logical_id, "CodeUri", props.get("CodeUri"), folder=True)
        ):
            props["CodeUri"] = f"s3://{bucket}/{upload(zip_folder(path))}"
        elif kind == "AWS::Serverless::LayerVersion" and (
            path := local(logical_id, "ContentUri", props.get("ContentUri"), folder=True)
        ):
            props["ContentUri"] = f"s3://{bucket}/{upload(zip_folder(path))}"
        elif kind == "AWS::Serverless::StateMachine" and (
            path := local(logical_id, "DefinitionUri", props.get("DefinitionUri"), folder=False)
        ):
            props["DefinitionUri"] = {"Bucket": bucket, "Key": upload(path.read_bytes())}
        elif kind in ("AWS::Serverless::Application", "AWS::CloudFormation::Stack"):
            prop = "Location" if kind == "AWS::Serverless::Application" else "TemplateURL"
            if path := local(logical_id, prop, props.get(prop), folder=False):
                # A nested template is packaged in turn (Orthanc's has no local paths of its own).
                nested = package(path.parent, load_template(path), bucket=bucket)
                artifacts.update(nested.artifacts)
                key = upload(json.dumps(nested.template, sort_keys=True).encode(), ".template")
                props[prop] = f"https://s3.{REGION}.amazonaws.com/{bucket}/{key}"
    return Packaged(packaged, artifacts)


# -- 2. translate ------------------------------------------------------------------------------


class OfflineManagedPolicyLoader:
    """The translator asks IAM for the ARNs of managed policies named in Policies; here nothing
    may be asked: a template that names one is told to use its ARN."""

    def load(self) -> dict[str, str]:
        raise RehearsalError("the template names a managed policy by name; write its ARN (the rehearsal is offline)")


def translate(packaged: dict[str, Any], parameters: Mapping[str, str]) -> dict[str, Any]:
    """The SAM transform, as CloudFormation runs it on the packaged template (what
    samtranslator's `transform()` does, with the region given rather than read from the
    environment, and the offline policy loader)."""
    import boto3
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator
    from samtranslator.utils.py27hash_fix import to_py27_compatible_template, undo_mark_unicode_str_in_template

    template, values = copy.deepcopy(packaged), dict(parameters)
    to_py27_compatible_template(template, values)
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name=REGION))
    try:
        translated = translator.translate(
            template, parameter_values=values, get_managed_policy_map=OfflineManagedPolicyLoader().load
        )
    except InvalidDocumentException as exc:
        causes = "; ".join(str(cause) for cause in exc.causes)
        raise RehearsalError(f"the SAM transform failed: {causes}") from exc
    return dict(undo_mark_unicode_str_in_template(translated))


# -- 3. references -----------------------------------------------------------------------------


def _sub_names(text: str) -> Iterator[tuple[str, str | None]]:
    """(name, attribute) of each ${Name} / ${Name.Attr} in a Fn::Sub string (not ${!Literal})."""
    for match in re.finditer(r"\$\{([^}]*)\}", text):
        inner = match.group(1)
        if inner.startswith("!"):
            continue
        name, _, attribute = inner.partition(".")
        yield name, attribute or None


def references(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(logical name, where) for every Ref, GetAtt and Fn::Sub variable in a value."""
    if isinstance(value, list):
        for n, item in enumerate(value):
            yield from references(item, f"{path}[{n}]")
    elif isinstance(value, dict):
        if set(value) == {"Ref"} and isinstance(value["Ref"], str):
            yield value["Ref"], path
        elif set(value) == {"Fn::GetAtt"}:
            target = value["Fn::GetAtt"]
            yield (target.split(".", 1)[0] if isinstance(target, str) else str(target[0])), path
        elif set(value) == {"Fn::Sub"}:
            sub = value["Fn::Sub"]
            text, variables = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])
            for name, _ in _sub_names(text):
                if name not in variables:
                    yield name, path
            yield from references(variables, path)
        else:
            for key, item in value.items():
                yield from references(item, f"{path}.{key}" if path else key)


def check_references(template: dict[str, Any]) -> None:
    """CloudFormation's template validation of references: every name a resource or an output
    uses is a resource, a parameter or a pseudo parameter."""
    known = set(template.get("Resources", {})) | set(template.get("Parameters", {})) | PSEUDO_PARAMETERS
    dangling: dict[str, list[str]] = {}
    for section in ("Resources", "Outputs"):
        for name, where in references(template.get(section, {}), section):
            if name not in known:
                dangling.setdefault(name, []).append(where)
    if dangling:
        listed = "; ".join(f"{name} (at {', '.join(places)})" for name, places in sorted(dangling.items()))
        raise RehearsalError(
            "Template format error: Unresolved resource dependencies "
            f"[{', '.join(sorted(dangling))}] in the Resources block of the template: {listed}"
        )


# -- conditions (which resources and outputs the stack has) -------------------------------------


def parameter_values(template: dict[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    """Each parameter's value: given, else its default; CommaDelimitedList as a list."""
    values: dict[str, Any] = {}
    for name, declared in template.get("Parameters", {}).items():
        if name in given:
            value: Any = str(given[name])
        elif "Default" in declared:
            value = str(declared["Default"])
        else:
            raise RehearsalError(f"parameter {name} has no default and no local value")
        if declared.get("Type") == "CommaDelimitedList":
            value = value.split(",")
        values[name] = value
    unknown = set(given) - set(values)
    if unknown:
        raise RehearsalError(f"no such parameters in the template: {', '.join(sorted(unknown))}")
    return values


def conditions(template: dict[str, Any], values: Mapping[str, Any]) -> dict[str, bool]:
    """The template's conditions evaluated with these parameter values (Equals, Not, And, Or,
    Condition, over Ref of parameters and Fn::Join)."""
    declared = template.get("Conditions", {})
    decided: dict[str, bool] = {}

    def value(expression: Any) -> Any:
        if isinstance(expression, dict) and set(expression) == {"Ref"}:
            name = expression["Ref"]
            if name == "AWS::Region":
                return REGION
            if name == "AWS::AccountId":
                return ACCOUNT
            return values[name]
        if isinstance(expression, dict) and set(expression) == {"Fn::Join"}:
            separator, parts = expression["Fn::Join"]
            parts = value(parts)
            return str(separator).join(str(value(p)) for p in (parts if isinstance(parts, list) else [parts]))
        if isinstance(expression, dict) and set(expression) == {"Condition"}:
            return condition(expression["Condition"])
        if isinstance(expression, dict) and len(expression) == 1:
            ((function, arguments),) = expression.items()
            if function == "Fn::Equals":
                return value(arguments[0]) == value(arguments[1])
            if function == "Fn::Not":
                return not value(arguments[0])
            if function == "Fn::And":
                return all(value(a) for a in arguments)
            if function == "Fn::Or":
                return any(value(a) for a in arguments)
        if isinstance(expression, list):
            return [value(item) for item in expression]
        if isinstance(expression, dict):
            raise RehearsalError(f"cannot evaluate the condition expression {expression!r} here")
        return expression

    def condition(name: str) -> bool:
        if name not in decided:
            decided[name] = bool(value(declared[name]))
        return decided[name]

    return {name: condition(name) for name in declared}


# -- what moto gets: stubs and hidden outputs ---------------------------------------------------


def modelled_types() -> frozenset[str]:
    """The resource types moto's CloudFormation creates (read from moto's own model map); it
    skips every other one."""
    from moto.cloudformation.parsing import get_model_map

    return frozenset(get_model_map())


@dataclass
class Plan:
    """Everything `rehearse` does, decided before any AWS call (cached per template)."""

    translated: dict[str, Any]  # what the SAM transform made
    body: str  # the template moto gets (stubs out, hidden outputs in)
    artifacts: dict[str, bytes]
    parameters: dict[str, str]
    expected: dict[str, str]  # logical id -> type of every resource the stack must have (moto's)
    stubbed: dict[str, str]  # logical id -> type: taken out, stood in for
    stand_ins: dict[str, str]  # logical id -> what a Ref to a stubbed resource gives
    outputs: list[str]  # the template's outputs the stack must have (their conditions hold)
    completions: dict[str, dict[str, Any]]  # logical id -> properties to apply, hidden outputs in them
    environments: dict[str, list[str]]  # function logical id -> its environment variables' names
    physical_outputs: dict[str, str]  # logical id -> the hidden output holding its physical id


def _stand_in(logical_id: str, kind: str, stack_name: str, attribute: str | None) -> str:
    base = f"{stack_name}-{logical_id}"
    if attribute is None:
        return base
    if attribute == "Arn":
        service = kind.split("::")[1].lower()
        return f"arn:aws:{service}:{REGION}:{ACCOUNT}:stub/{base}"
    return f"{base}-{attribute}"


def _replace_stubbed(value: Any, stubbed: Mapping[str, str], stack_name: str) -> Any:
    """`value` with every reference to a stubbed resource replaced by its stand-in."""
    if isinstance(value, list):
        return [_replace_stubbed(item, stubbed, stack_name) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"} and value["Ref"] in stubbed:
        return _stand_in(value["Ref"], stubbed[value["Ref"]], stack_name, None)
    if set(value) == {"Fn::GetAtt"}:
        target = value["Fn::GetAtt"]
        name, attribute = target.split(".", 1) if isinstance(target, str) else (target[0], target[1])
        if name in stubbed:
            return _stand_in(name, stubbed[name], stack_name, attribute)
    if set(value) == {"Fn::Sub"}:
        sub = value["Fn::Sub"]
        text, variables = (sub, {}) if isinstance(sub, str) else (sub[0], sub[1])

        def replace(match: re.Match[str]) -> str:
            name, _, attribute = match.group(1).partition(".")
            if match.group(1).startswith("!") or name in variables or name not in stubbed:
                return match.group(0)
            return _stand_in(name, stubbed[name], stack_name, attribute or None)

        text = re.sub(r"\$\{([^}]*)\}", replace, text)
        variables = _replace_stubbed(variables, stubbed, stack_name)
        return {"Fn::Sub": text if isinstance(sub, str) else [text, variables]}
    return {key: _replace_stubbed(item, stubbed, stack_name) for key, item in value.items()}


def _replace_refs(value: Any, replacements: Mapping[str, Any]) -> Any:
    """`value` with each {"Ref": name} of `replacements` replaced by its value."""
    if isinstance(value, list):
        return [_replace_refs(item, replacements) for item in value]
    if isinstance(value, dict):
        if set(value) == {"Ref"} and value["Ref"] in replacements:
            return copy.deepcopy(replacements[value["Ref"]])
        return {key: _replace_refs(item, replacements) for key, item in value.items()}
    return value


_INTRINSICS = ("Ref", "Fn::GetAtt", "Fn::Sub", "Fn::Join", "Fn::If", "Fn::Select", "Fn::Split", "Fn::ImportValue")


def _hide(value: Any, outputs: dict[str, Any], condition: str | None) -> Any:
    """`value` with each intrinsic replaced by {"__output__": name} of a hidden output holding it."""
    if isinstance(value, list):
        return [_hide(item, outputs, condition) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _INTRINSICS:
        name = f"{_HIDDEN_OUTPUT}{len(outputs)}"
        outputs[name] = {"Value": value, **({"Condition": condition} if condition else {})}
        return {"__output__": name}
    return {key: _hide(item, outputs, condition) for key, item in value.items()}


def _reveal(value: Any, outputs: Mapping[str, str]) -> Any:
    if isinstance(value, list):
        return [_reveal(item, outputs) for item in value]
    if isinstance(value, dict):
        if set(value) == {"__output__"}:
            return outputs[value["__output__"]]
        return {key: _reveal(item, outputs) for key, item in value.items()}
    return value


# What the rehearsal applies after moto created the stack (see the module's docstring).
_COMPLETED = {
    "AWS::S3::Bucket": ("VersioningConfiguration", "ObjectLockConfiguration", "NotificationConfiguration"),
    "AWS::StepFunctions::StateMachine": (
        "StateMachineName",
        "StateMachineType",
        "DefinitionS3Location",
        "DefinitionString",
        "DefinitionSubstitutions",
        "RoleArn",
    ),
    "AWS::SecretsManager::Secret": ("Name", "GenerateSecretString", "SecretString", "KmsKeyId", "Description"),
}


@functools.lru_cache(maxsize=8)
def _prepare(project: str, template_text: str, parameters: tuple[tuple[str, str], ...], stack_name: str) -> Plan:
    given = dict(parameters)
    template = load_template(Path(project) / TEMPLATE_PATH)
    packaged = package(Path(project), template)
    translated = translate(packaged.template, given)
    check_references(translated)
    values = parameter_values(translated, given)
    holds = conditions(translated, values)
    modelled = modelled_types()
    resources = translated.get("Resources", {})

    def present(resource: dict[str, Any]) -> bool:
        return holds.get(resource["Condition"], False) if "Condition" in resource else True

    stubbed = {lid: r["Type"] for lid, r in resources.items() if r["Type"] not in modelled}
    moto_template = _replace_stubbed(
        {k: v for k, v in translated.items() if k not in ("Resources", "Outputs")}, stubbed, stack_name
    )
    # moto's Ref of a layer version is its Python object (its model has no physical id): the ARN
    # CloudFormation's Ref gives, version 1 of the LayerName in a new account, is written instead.
    layers = {
        lid: {"Fn::Join": ["", [f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:", r["Properties"]["LayerName"], ":1"]]}
        for lid, r in resources.items()
        if r["Type"] == "AWS::Lambda::LayerVersion"
    }
    moto_template["Resources"] = {}
    for lid, resource in resources.items():
        if lid in stubbed:
            continue
        resource = _replace_refs(_replace_stubbed(resource, stubbed, stack_name), layers)
        depends = resource.get("DependsOn")
        if depends is not None:
            kept = [d for d in ([depends] if isinstance(depends, str) else depends) if d not in stubbed]
            resource["DependsOn"] = kept
            if not kept:
                del resource["DependsOn"]
        moto_template["Resources"][lid] = resource
    moto_template["Outputs"] = _replace_refs(
        _replace_stubbed(translated.get("Outputs", {}), stubbed, stack_name), layers
    )

    completions: dict[str, dict[str, Any]] = {}
    hidden: dict[str, Any] = {}
    for lid, resource in resources.items():
        if resource["Type"] not in _COMPLETED or not present(resource):
            continue
        props = _replace_stubbed(resource.get("Properties", {}), stubbed, stack_name)
        wanted = {k: v for k, v in props.items() if k in _COMPLETED[resource["Type"]]}
        completions[lid] = _hide(wanted, hidden, resource.get("Condition"))
    physical_outputs = {}
    for lid, arn in layers.items():
        physical_outputs[lid] = f"{_HIDDEN_OUTPUT}{len(hidden)}"
        hidden[physical_outputs[lid]] = {"Value": arn}
    moto_template["Outputs"].update(hidden)

    environments = {
        lid: sorted(r.get("Properties", {}).get("Environment", {}).get("Variables", {}))
        for lid, r in resources.items()
        if r["Type"] == "AWS::Lambda::Function" and present(r)
    }
    outputs = [
        name
        for name, output in translated.get("Outputs", {}).items()
        if "Condition" not in output or holds.get(output["Condition"], False)
    ]
    return Plan(
        translated=translated,
        # The tab: see the module's docstring (moto tries YAML first, slowly).
        body="\t" + json.dumps(moto_template),
        artifacts=packaged.artifacts,
        parameters={k: v if isinstance(v, str) else ",".join(v) for k, v in values.items()},
        expected={lid: r["Type"] for lid, r in moto_template["Resources"].items() if present(r)},
        stubbed={lid: kind for lid, kind in stubbed.items() if present(resources[lid])},
        stand_ins={lid: _stand_in(lid, kind, stack_name, None) for lid, kind in stubbed.items()},
        outputs=outputs,
        completions=completions,
        environments=environments,
        physical_outputs=physical_outputs,
    )


def prepare(project: Path, parameters: Mapping[str, str] | None = None, *, stack_name: str = STACK_NAME) -> Plan:
    """Package, translate, check and plan (no AWS call); cached per template text and parameters."""
    project = project.resolve()
    text = (project / TEMPLATE_PATH).read_text(encoding="utf-8")
    return _prepare(str(project), text, tuple(sorted((parameters or {}).items())), stack_name)


# -- 4. the stack ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    """What the rehearsal's stack holds: its outputs, resources and functions' settings."""

    name: str
    outputs: dict[str, str]
    resources: dict[str, str]  # logical id -> physical id (stubbed ones: their stand-in)
    types: dict[str, str]  # logical id -> resource type
    stubbed: dict[str, str]  # logical id -> type of the resources moto's CloudFormation skipped
    parameters: dict[str, str]
    functions: dict[str, str] = field(default_factory=dict)  # function logical id -> its ARN
    environments: dict[str, dict[str, str]] = field(default_factory=dict)  # function logical id -> env
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step

    def output(self, key: str) -> str:
        if key not in self.outputs:
            raise RehearsalError(
                f"the stack has no output {key} (template.yaml's Outputs: {', '.join(sorted(self.outputs))})"
            )
        return self.outputs[key]

    def physical_id(self, logical_id: str) -> str:
        if logical_id not in self.resources:
            raise RehearsalError(f"the stack has no resource {logical_id}")
        return self.resources[logical_id]

    def environment(self, function: str) -> dict[str, str]:
        """A function's environment variables, as the stack's Lambda function has them."""
        if function not in self.environments:
            raise RehearsalError(f"the stack has no function {function}")
        return dict(self.environments[function])


def rehearse(
    project: Path,
    parameters: Mapping[str, str] | None = None,
    *,
    stack_name: str = STACK_NAME,
    executable: Iterable[str] | None = None,
    timeout: float = 60.0,
) -> Stack:
    """Create the template's stack on moto (which must be active: `mock_aws`) and return it.

    `executable`: the state machines (logical ids) to create where moto executes them (each costs
    moto a parse of its definition, ~0.3 s); by default all of them."""
    import boto3

    started = time.perf_counter()
    plan = prepare(project, parameters, stack_name=stack_name)
    prepared = time.perf_counter()
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket=ARTIFACT_BUCKET)
    for key, data in plan.artifacts.items():
        s3.put_object(Bucket=ARTIFACT_BUCKET, Key=key, Body=data)
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with warnings.catch_warnings():
        # moto warns once per resource it skips: those are the stubs, already accounted for.
        warnings.filterwarnings("ignore", message="Tried to parse .* not supported by moto")
        import logging

        moto_logger = logging.getLogger("moto")
        level = moto_logger.level
        moto_logger.setLevel(logging.ERROR)
        try:
            cloudformation.create_stack(
                StackName=stack_name,
                TemplateBody=plan.body,
                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in plan.parameters.items()],
                Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
            )
            description = _wait(cloudformation, stack_name, timeout)
        finally:
            moto_logger.setLevel(level)
    created = time.perf_counter()
    all_outputs = {o["OutputKey"]: o.get("OutputValue") for o in description.get("Outputs", [])}
    hidden = {k: str(v) for k, v in all_outputs.items() if k.startswith(_HIDDEN_OUTPUT)}
    outputs = {k: v for k, v in all_outputs.items() if not k.startswith(_HIDDEN_OUTPUT)}
    missing_outputs = [name for name in plan.outputs if not outputs.get(name)]
    if missing_outputs:
        raise RehearsalError(f"the stack was created without the outputs {', '.join(missing_outputs)}")

    # moto lists a resource whose condition is false as an entry with no ids: left out here.
    listed = [
        r
        for r in cloudformation.describe_stack_resources(StackName=stack_name)["StackResources"]
        if "LogicalResourceId" in r
    ]
    # moto reports no physical id for a Lambda permission, nor (see _prepare) for a layer version.
    physical = {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in listed}
    physical.update({lid: hidden[output] for lid, output in plan.physical_outputs.items()})
    failed = [r["LogicalResourceId"] for r in listed if r["ResourceStatus"] != "CREATE_COMPLETE"]
    missing = sorted(set(plan.expected) - set(physical))
    if missing or failed:
        raise RehearsalError(
            f"moto's CloudFormation did not create {', '.join(missing + failed)} "
            f"({', '.join(sorted({plan.expected.get(m, '?') for m in missing + failed}))})"
        )
    resources = {**physical, **{lid: plan.stand_ins[lid] for lid in plan.stubbed}}
    types = {**plan.expected, **plan.stubbed}

    for logical_id, props in plan.completions.items():
        machine = types[logical_id] == "AWS::StepFunctions::StateMachine"
        if machine and executable is not None and logical_id not in executable:
            continue
        _complete(types[logical_id], resources[logical_id], _reveal(props, hidden))

    functions, environments = _functions(plan, physical)
    return Stack(
        name=stack_name,
        outputs={k: str(v) for k, v in outputs.items()},
        resources=resources,
        types=types,
        stubbed=dict(plan.stubbed),
        parameters=dict(plan.parameters),
        functions=functions,
        environments=environments,
        timings={
            "prepare": prepared - started,
            "create": created - prepared,
            "complete": time.perf_counter() - created,
        },
    )


def _wait(cloudformation: Any, stack_name: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        [description] = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
        status = description["StackStatus"]
        if status == "CREATE_COMPLETE":
            return dict(description)
        if not status.endswith("_IN_PROGRESS"):
            raise RehearsalError(
                f"stack {stack_name}: {status} ({description.get('StackStatusReason', 'no reason given')})"
            )
        if time.monotonic() > deadline:
            raise RehearsalError(f"stack {stack_name} still {status} after {timeout:.0f} s")
        time.sleep(0.05)


def _functions(plan: Plan, physical: Mapping[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Each function's ARN and environment, read back from moto's Lambda; a variable the template
    sets and the function lacks (its value resolved to nothing) fails the rehearsal."""
    import boto3

    client = boto3.client("lambda", region_name=REGION)
    arns: dict[str, str] = {}
    environments: dict[str, dict[str, str]] = {}
    for logical_id, names in plan.environments.items():
        configuration = client.get_function_configuration(FunctionName=physical[logical_id])
        variables = dict(configuration.get("Environment", {}).get("Variables", {}))
        lost = [name for name in names if name not in variables]
        if lost:
            raise RehearsalError(f"{logical_id}'s environment lost {', '.join(lost)}: their values resolved to nothing")
        arns[logical_id] = configuration["FunctionArn"]
        environments[logical_id] = {k: str(v) for k, v in variables.items()}
    return arns, environments


def _complete(kind: str, physical_id: str, props: dict[str, Any]) -> None:
    """Apply what moto's CloudFormation models leave out (see the module's docstring)."""
    import boto3

    if kind == "AWS::S3::Bucket":
        s3 = boto3.client("s3", region_name=REGION)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled" or "ObjectLockConfiguration" in props:
            s3.put_bucket_versioning(Bucket=physical_id, VersioningConfiguration={"Status": "Enabled"})
        if "ObjectLockConfiguration" in props:
            lock = props["ObjectLockConfiguration"]
            configuration: dict[str, Any] = {"ObjectLockEnabled": lock.get("ObjectLockEnabled", "Enabled")}
            if "Rule" in lock:
                retention = dict(lock["Rule"]["DefaultRetention"])
                for unit in ("Days", "Years"):
                    if unit in retention:
                        retention[unit] = int(retention[unit])
                configuration["Rule"] = {"DefaultRetention": retention}
            s3.put_object_lock_configuration(Bucket=physical_id, ObjectLockConfiguration=configuration)
        queues = props.get("NotificationConfiguration", {}).get("QueueConfigurations", [])
        if queues:
            s3.put_bucket_notification_configuration(
                Bucket=physical_id,
                NotificationConfiguration={
                    "QueueConfigurations": [
                        {
                            "QueueArn": q["Queue"],
                            "Events": [q["Event"]],
                            **(
                                {"Filter": {"Key": {"FilterRules": q["Filter"]["S3Key"]["Rules"]}}}
                                if "Filter" in q
                                else {}
                            ),
                        }
                        for q in queues
                    ]
                },
            )
    elif kind == "AWS::StepFunctions::StateMachine":
        if "DefinitionS3Location" in props:
            location = props["DefinitionS3Location"]
            s3 = boto3.client("s3", region_name=REGION)
            definition = s3.get_object(Bucket=location["Bucket"], Key=location["Key"])["Body"].read().decode()
        else:
            definition = props["DefinitionString"]
        for name, value in props.get("DefinitionSubstitutions", {}).items():
            definition = definition.replace("${" + name + "}", str(value))
        left = sorted({m for m, _ in _sub_names(definition)})
        if left:
            raise RehearsalError(f"state machine {physical_id}: no substitution for {', '.join(left)}")
        boto3.client("stepfunctions", region_name=REGION).create_state_machine(
            name=physical_id.rsplit(":", 1)[-1],
            definition=definition,
            roleArn=props["RoleArn"],
            type=props.get("StateMachineType", "STANDARD"),
        )
    elif kind == "AWS::SecretsManager::Secret":
        if "SecretString" in props:
            value = str(props["SecretString"])
        else:
            generate = props.get("GenerateSecretString", {})
            alphabet = string.ascii_letters + string.digits
            if not generate.get("ExcludePunctuation"):
                alphabet += string.punctuation
            value = "".join(secrets.choice(alphabet) for _ in range(int(generate.get("PasswordLength", 32))))
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=physical_id,
            SecretString=value,
            **({"KmsKeyId": str(props["KmsKeyId"])} if "KmsKeyId" in props else {}),
            **({"Description": str(props["Description"])} if "Description" in props else {}),
        )
