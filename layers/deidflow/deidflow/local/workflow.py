"""The whole workflow on one machine: the real state machine and handlers, with AWS played by moto.

What runs is what deploys: template.yaml packaged, translated and created as a stack on moto's
CloudFormation (`deidflow.local.stack`), whose outputs and resources name every bucket, queue,
table and secret used here and whose Lambda functions give the handlers their environment;
`statemachines/deidentify.asl.json` executed by moto's Step Functions interpreter with the stack's
function ARNs substituted, the handlers in `functions/<step>/app.py` called in-process for each
Lambda task, S3 notifications into SQS, and a stand-in for the EventBridge Pipe (which moto cannot
create) that reads the queue, invokes its enrichment (ExpandBatch) with the batch as the Pipe
does, starts an execution with the enrichment's answer and deletes the messages only when the
execution succeeded. Tests and `deidflow local run`
use it; nothing here is deployed.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote

from ..cloud import handler
from ..cloud.handler import reset_services
from ..cloud.objects import KeySeal, parse_batch
from ..pseudonym import object_ref
from ..storage import CATALOG_DUMP, INDEX_DUMP, LocalStore
from .stack import RehearsalError, Stack, rehearse

REGION = "us-east-1"
ACCOUNT = "123456789012"
# State machine substitution name -> function folder (functions/<folder>/app.py).
FUNCTIONS = {
    "ExpandBatch": "expand_batch",
    "DeidentifyHeader": "deidentify_header",
    "RedactBurnedInText": "redact_burned_in_text",
    "IndexHeader": "index_header",
    "Publish": "publish",
    "Quarantine": "quarantine",
    "Park": "park",
    "WithdrawSource": "withdraw_source",
    "Backfill": "backfill",
}
ASL_PATH = Path("statemachines") / "deidentify.asl.json"
TEMPLATE_PATH = Path("template.yaml")
_AWS_ENVIRONMENT = {"AWS_DEFAULT_REGION": REGION, "AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local"}


@dataclass(frozen=True)
class LocalNames:
    """What each of the template's resources is called on this machine: the workflow's are read from
    the rehearsal's stack (`names_of`); the defaults are the research API's (`deidflow local api`
    still creates its resources itself)."""

    ingest_bucket: str = "deidflow-ingest"
    research_bucket: str = "deidflow-research"
    ingest_prefix: str = "incoming/"
    orthanc_prefix: str = "orthanc/"  # where Orthanc's S3 plugin writes in the cloud
    queue: str = "deidflow-ingest-queue"
    dead_letter_queue: str = "deidflow-ingest-dlq"
    index_table: str = "deidflow-index"
    catalog_table: str = "deidflow-catalog"
    mapping_table: str = "deidflow-mapping"
    status_table: str = "deidflow-status"
    key_secret: str = "deidflow/pseudonymisation-key"
    object_ref_secret: str = "deidflow/object-ref-key"
    state_machine: str = "deidflow-deidentify"
    # the research API's own (deidflow local api)
    audit_table: str = "deidflow-audit"
    audit_bucket: str = "deidflow-audit"
    audit_head_parameter: str = "/deidflow/local/audit-chain-head"
    profiles_bucket: str = "deidflow-access-config"
    jobs_table: str = "deidflow-jobs"
    exports_bucket: str = "deidflow-exports"


def names_of(stack: Stack) -> LocalNames:
    """The workflow's resources as the stack names them: its outputs where the template gives one
    (what an operator reads after `sam deploy`), else the resource's physical id."""

    def name_in(url: str) -> str:
        return url.rstrip("/").rsplit("/", 1)[-1]

    return LocalNames(
        ingest_bucket=stack.output("IngestBucketName"),
        research_bucket=stack.output("ResearchBucketName"),
        ingest_prefix=stack.output("DropPrefix"),
        orthanc_prefix=stack.parameters["OrthancPrefix"],
        queue=name_in(stack.output("IngestQueueUrl")),
        dead_letter_queue=name_in(stack.output("DeadLetterQueueUrl")),
        index_table=stack.output("IndexTableName"),
        catalog_table=stack.physical_id("CatalogTable"),
        mapping_table=stack.output("MappingTableName"),
        status_table=stack.output("StatusTableName"),
        key_secret=stack.physical_id("PseudonymKeySecret"),
        object_ref_secret=stack.physical_id("ObjectRefKeySecret"),
        state_machine=stack.output("StateMachineArn").rsplit(":", 1)[-1],
    )


@dataclass
class ObjectPath:
    """What the console shows for one object: the states it went through and where it ended."""

    key: str
    states: list[str]
    status: str  # published | quarantined | skipped
    detail: str | None = None  # research key, quarantine reason or skip reason

    def describe(self) -> str:
        """Two lines for an operator: the object, then its states and outcome."""
        return f"{self.key}\n    {' -> '.join(self.states)}  [{self.status}: {self.detail}]"


@dataclass
class ExecutionReport:
    execution_arn: str
    status: str
    objects: list[ObjectPath] = field(default_factory=list)
    # The SQS message ids the execution gave back to the Pipe (`batchItemFailures`): retried alone.
    item_failures: list[str] = field(default_factory=list)


@dataclass
class LocalRun:
    executions: list[ExecutionReport]
    research_files: list[Path]

    @property
    def objects(self) -> list[ObjectPath]:
        return [path for report in self.executions for path in report.objects]

    @property
    def failed_executions(self) -> int:
        return sum(1 for report in self.executions if report.status != "SUCCEEDED")


def run_local(sources: Iterable[Path], destination: Path, key: bytes, **options: Any) -> LocalRun:
    """Drop `sources` (files or folders) into a fresh local stack, run the pipe dry, fetch the results."""
    with LocalWorkflow(key, **options) as workflow:
        for source in sources:
            if source.is_dir():
                workflow.drop_folder(source)
            else:
                workflow.drop(source.name, source.read_bytes())
        executions = workflow.run_pipe()
        return LocalRun(executions, workflow.download_research(destination))


def find_project(start: Path | None = None) -> Path:
    """The checkout that holds the state machine and the functions (cwd or a parent)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ASL_PATH).is_file() and (folder / "functions").is_dir():
            return folder
    raise FileNotFoundError(f"no {ASL_PATH} with functions/ beside it in {here} or its parents")


def load_module(path: Path) -> ModuleType:
    """A function's app.py, imported from the checkout (functions/<name>/app.py)."""
    spec = importlib.util.spec_from_file_location(f"deidflow_function_{path.parent.name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_handlers(project: Path) -> dict[str, Callable[[Any, Any], Any]]:
    """The real handlers, imported from the checkout's functions/ folders."""
    return {name: load_module(project / "functions" / folder / "app.py").handler for name, folder in FUNCTIONS.items()}


class LocalWorkflow:
    """Use as a context manager: AWS is mocked inside it, and only inside it."""

    def __init__(
        self,
        key: bytes,
        *,
        project: Path | None = None,
        rules_file: str | None = None,
        text_detector: str = "local",
        max_object_mb: int = 512,
        workflow_type: str = "EXPRESS",
        batch_size: int = 10,
        log_level: str = "WARNING",
        object_ref_key: bytes | None = None,
        redrive_delay_seconds: int = 0,
        on_source_delete: str = "remove",
    ):
        self.project = find_project(project)
        self.key = key
        # The key of the objects' references (ObjectRefKeySecret): a fresh one per run unless given
        # (`deidflow object-ref --key-file` computes a reference with a given one).
        self.object_ref_key = object_ref_key if object_ref_key is not None else secrets.token_bytes(32)
        self.log_level = log_level
        # The stack's parameters for this run: the functions' MAX_OBJECT_MB and ON_SOURCE_DELETE,
        # the state machine's type and the Pipe's batch size come from them, as in a deploy.
        self.parameters = {
            "WorkflowType": workflow_type,
            "MaxObjectMB": str(max_object_mb),
            "BatchSize": str(batch_size),
            # A Standard execution whose Park failed waits this long before parking again.
            "ParkAgainSeconds": "1",
            "OnSourceDelete": on_source_delete,
        }
        self.rules_file = rules_file
        self.text_detector = text_detector
        self.redrive_delay_seconds = redrive_delay_seconds
        self._saved_env: dict[str, str | None] = {}
        self._mock: Any = None
        self._lock = threading.Lock()
        self._queue_arns: dict[str, str] = {}
        self._histories: dict[str, list[dict[str, Any]]] = {}  # of finished executions
        self.metrics: list[dict[str, Any]] = []  # CloudWatch EMF documents the handlers emitted
        self.invocations: list[tuple[str, str]] = []  # (function, object key) in call order
        self.enrichment_failures = 0  # batches the Pipe's ExpandBatch call failed (left on the queue)
        self._keys_by_ref: dict[str, str] = {}  # object reference -> key, of every object the Pipe read
        self.durations: list[tuple[str, float]] = []  # (function, seconds) per invocation, for costing

    # -- set-up and tear-down -------------------------------------------------------------------

    def __enter__(self) -> LocalWorkflow:
        from moto import mock_aws

        self._set_environment(_AWS_ENVIRONMENT)
        self._mock = mock_aws(config={"stepfunctions": {"execute_state_machine": True}})
        self._mock.start()
        try:
            _as_aws_notifies(True)
            _moto_at_scale(True)
            import boto3

            boto3.setup_default_session()
            reset_services()
            self._log_level = handler.logger.log_level
            handler.logger.setLevel(self.log_level)
            # The template, packaged, translated and created as a stack (deidflow.local.stack): every
            # name below comes from its outputs and resources, the handlers' settings from its functions.
            self.stack = rehearse(
                self.project,
                self.parameters,
                executable={"DeidentifyStateMachine", "DeidentifyLongStateMachine", "BackfillStateMachine"},
            )
            self.names = names_of(self.stack)
            self.batch_size = int(self.stack.parameters["BatchSize"])
            self._arns = {self.stack.functions[f"{name}Function"]: name for name in FUNCTIONS}
            self.environment = {**_AWS_ENVIRONMENT, **self._function_environment()}
            self._set_environment(self.environment)
            self.handlers = load_handlers(self.project)
            # moto's interpreter calls lambda:Invoke through boto3's default session: answer it here.
            boto3.DEFAULT_SESSION.events.register("before-call.lambda.Invoke", self._invoke)
            self.s3 = boto3.client("s3")
            self.sqs = boto3.client("sqs")
            self.dynamodb = boto3.resource("dynamodb")
            self.sfn = boto3.client("stepfunctions")
            self._prepare_resources()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _set_environment(self, variables: dict[str, str]) -> None:
        for name, value in variables.items():
            self._saved_env.setdefault(name, os.environ.get(name))
            os.environ[name] = value

    def _function_environment(self) -> dict[str, str]:
        """The workflow functions' environment, as the stack's Lambda functions have it (they run
        in this one process, so they must agree), with what a local run changes on top."""
        environment: dict[str, str] = {}
        for name in FUNCTIONS:
            own = self.stack.environment(f"{name}Function")
            clash = sorted(k for k in own if k in environment and environment[k] != own[k])
            if clash:
                raise RehearsalError(f"the workflow functions have different {', '.join(clash)} in the stack")
            environment.update(own)
        # What a local run changes: its detector, and no X-Ray daemon to trace to.
        environment["TEXT_DETECTOR"] = self.text_detector
        environment["POWERTOOLS_TRACE_DISABLED"] = "true"
        # A parked object comes back at once: run_pipe drains the queue, redrives and all.
        environment["REDRIVE_DELAY_SECONDS"] = str(self.redrive_delay_seconds)
        if self.rules_file:
            environment["RULES_FILE"] = str(self.rules_file)
        return environment

    def __exit__(self, *exc: object) -> None:
        _as_aws_notifies(False)
        _moto_at_scale(False)
        reset_services()
        if hasattr(self, "_log_level"):
            handler.logger.setLevel(self._log_level)
        if self._mock is not None:
            self._mock.stop()
            self._mock = None
        import boto3

        boto3.DEFAULT_SESSION = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def _prepare_resources(self) -> None:
        """What the stack leaves to whoever deploys it: the local keys into its secrets, and the
        ingest queue emptied of the s3:TestEvent that the new notification configuration sent (in
        the cloud ExpandBatch skips it once, at deploy time; here it would be counted in every
        run's summary)."""
        self.queue_url = self.stack.output("IngestQueueUrl")
        self.dead_letter_queue_url = self.stack.output("DeadLetterQueueUrl")
        announced = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages", [])
        for message in announced:
            if '"s3:TestEvent"' in message["Body"]:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        import boto3

        secretsmanager = boto3.client("secretsmanager")
        for secret_id, secret_key in (
            (self.names.key_secret, self.key),
            (self.names.object_ref_secret, self.object_ref_key),
        ):
            secretsmanager.put_secret_value(SecretId=secret_id, SecretString=base64.b64encode(secret_key).decode())
        self.state_machine_arn = self.stack.output("StateMachineArn")
        # The long lane (cloud/budget.py): started by ExpandBatch and Park, not by the Pipe.
        self.long_lane_arn = self.stack.physical_id("DeidentifyLongStateMachine")
        self._reported: set[str] = set()
        self.key_seal = KeySeal(self.object_ref_key)
        self.lambda_client = boto3.client("lambda")

    def _queue_arn(self, url: str) -> str:
        # Asked once per queue: moto computes every attribute of the queue, its message counts
        # included, on each call, which is slow on a deep queue and the ARN never changes.
        if url not in self._queue_arns:
            attributes = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
            self._queue_arns[url] = attributes["QueueArn"]
        return self._queue_arns[url]

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold off the handlers (they run one at a time under this lock): moto's DynamoDB is not
        thread-safe, so a read made beside a running execution (backfill progress) takes it."""
        with self._lock:
            yield

    def function_arn(self, name: str) -> str:
        """The ARN of a workflow function (FUNCTIONS' names) in the stack."""
        return self.stack.functions[f"{name}Function"]

    # -- the Lambda stand-in --------------------------------------------------------------------

    def invoked(self, params: dict[str, Any]) -> tuple[str, str, Any]:
        """(function name, ARN, event) of a lambda:Invoke call, from its request parameters."""
        arn = unquote(params["url_path"].split("/functions/", 1)[1].split("/", 1)[0])
        return self._arns[arn], arn, json.loads(params.get("body") or b"null")

    def _invoke(self, params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]]:
        name, arn, event = self.invoked(params)
        source = event.get("source", {}) if isinstance(event, dict) else {}
        self.invocations.append((name, self.key_of(source)))
        # One call at a time (the Map runs iterations on threads): handlers see one container each,
        # and the metrics they print (CloudWatch EMF on stdout) are collected, not shown.
        with self._lock, contextlib.redirect_stdout(io.StringIO()) as printed:
            started = time.perf_counter()
            answer = lambda_answer(arn, lambda: self.handlers[name](event, LambdaContext(arn)))
            self.durations.append((name, time.perf_counter() - started))
        self.metrics += [json.loads(line) for line in printed.getvalue().splitlines() if line.startswith('{"_aws"')]
        return answer

    def key_of(self, source: Any) -> str:
        """The key of a payload's `source` (its sealed key opened), or "" when it names none."""
        if not isinstance(source, dict):
            return ""
        if source.get("sealed_key"):
            return self.key_seal.open(str(source["bucket"]), str(source["sealed_key"]))
        return str(source.get("key") or self._keys_by_ref.get(str(source.get("ref")), ""))

    def object_ref(self, key: str, bucket: str | None = None) -> str:
        """The reference logs and the status table give an ingest object (what `deidflow object-ref` prints)."""
        return object_ref(self.object_ref_key, bucket or self.names.ingest_bucket, key)

    # -- feeding and draining -------------------------------------------------------------------

    def drop(self, relative_key: str, data: bytes) -> str:
        """Put an object into the drop folder (the ingest prefix); returns its S3 key."""
        key = self.names.ingest_prefix + relative_key.lstrip("/")
        self.s3.put_object(Bucket=self.names.ingest_bucket, Key=key, Body=data)
        return key

    def drop_folder(self, folder: Path) -> list[str]:
        """Every file under `folder` (sorted), keyed by its relative path."""
        keys = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            keys.append(self.drop(path.relative_to(folder).as_posix(), path.read_bytes()))
        return keys

    def take_over(self, folder: Path, prefix: str | None = None) -> list[str]:
        """Move finished files from a local folder into the ingest bucket (the local Orthanc's hand-over).

        Hidden files are a writer's work in progress (write, then rename) and wait for the next call.
        Each file is deleted once stored, so PHI does not pile up on disk.
        """
        prefix = self.names.orthanc_prefix if prefix is None else prefix
        keys = []
        for path in sorted(p for p in folder.glob("*") if p.is_file() and not p.name.startswith(".")):
            key = prefix + path.name
            self.s3.put_object(Bucket=self.names.ingest_bucket, Key=key, Body=path.read_bytes())
            path.unlink()
            keys.append(key)
        return keys

    def run_pipe(self, *, timeout: float = 600.0, batches: int | None = None) -> list[ExecutionReport]:
        """The Pipe's job: batches from the queue into executions, until the queue is empty (or
        `batches` executions ran). A succeeded execution's messages are deleted but for those it
        names in `batchItemFailures`, which are visible again at once (the Pipe's partial batch
        failure); a failed execution leaves all of its batch."""
        reports: list[ExecutionReport] = []
        while batches is None or len(reports) < batches:
            messages = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch_size, AttributeNames=["All"]
            ).get("Messages", [])
            if not messages:
                # The long lane's executions, once they end: their Parks may have queued more.
                long_lane = self.long_lane_reports(timeout=timeout)
                if not long_lane:
                    return reports
                reports += long_lane
                continue
            batch = self.enrich([self._pipe_record(m) for m in messages])
            if batch is None:  # the Pipe leaves the batch on the queue: it comes back (or, in time, to the DLQ)
                self._visible_again(messages)
                continue
            report = self.run_execution(batch, timeout=timeout)
            reports.append(report)
            standard = self.parameters["WorkflowType"] == "STANDARD"
            if report.status != "SUCCEEDED" and not standard:  # its messages stay for redelivery (then the DLQ)
                return reports
            # Standard: FIRE_AND_FORGET, the Pipe deleted the batch once the execution started.
            done = [m for m in messages if standard or m["MessageId"] not in report.item_failures]
            again = [m for m in messages if m not in done]
            if done:
                self.sqs.delete_message_batch(
                    QueueUrl=self.queue_url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                )
            if again:
                self._visible_again(again)
        return reports

    def _visible_again(self, messages: list[dict[str, Any]]) -> None:
        """Messages the Pipe gives back: received again at once (here, no visibility timeout to wait out)."""
        self.sqs.change_message_visibility_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                for i, m in enumerate(messages)
            ],
        )

    def enrich(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The Pipe's enrichment: ExpandBatch invoked with the batch, its answer the execution's
        input; None when the call failed (throttled, or the function raised)."""
        for ref in parse_batch(records, ()).objects:
            self._keys_by_ref[self.object_ref(ref.key, ref.bucket)] = ref.key
        from botocore.exceptions import ClientError

        try:
            answer = self.lambda_client.invoke(
                FunctionName=self.function_arn("ExpandBatch"), Payload=json.dumps(records).encode()
            )
        except ClientError:
            self.enrichment_failures += 1
            return None
        payload = json.loads(answer["Payload"].read())
        if answer.get("FunctionError"):
            self.enrichment_failures += 1
            return None
        return dict(payload)

    def execute(self, records: list[dict[str, Any]], *, timeout: float = 600.0) -> ExecutionReport:
        """What the Pipe does with one batch of SQS records: the enrichment, then the execution."""
        batch = self.enrich(records)
        if batch is None:
            raise RuntimeError("the Pipe's enrichment (ExpandBatch) failed for this batch")
        return self.run_execution(batch, timeout=timeout)

    def run_execution(self, batch: dict[str, Any], *, timeout: float = 600.0) -> ExecutionReport:
        """Start one execution with the enrichment's answer as input and wait for it (the Pipe's
        REQUEST_RESPONSE)."""
        arn = self.sfn.start_execution(
            stateMachineArn=self.state_machine_arn, name=f"batch-{uuid.uuid4()}", input=json.dumps(batch)
        )["executionArn"]
        return self._report(arn, timeout)

    def long_lane_reports(self, *, timeout: float = 600.0) -> list[ExecutionReport]:
        """The long lane's executions not reported yet, each waited for."""
        arns: list[str] = []
        kwargs: dict[str, Any] = {"stateMachineArn": self.long_lane_arn}
        while True:
            page = self.sfn.list_executions(**kwargs)
            arns += [e["executionArn"] for e in page["executions"] if e["executionArn"] not in self._reported]
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        return [self._report(arn, timeout) for arn in sorted(arns)]

    def _report(self, arn: str, timeout: float) -> ExecutionReport:
        self._reported.add(arn)
        deadline = time.monotonic() + timeout
        while True:
            status = self.sfn.describe_execution(executionArn=arn)
            if status["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {arn} still running after {timeout:.0f} s")
            time.sleep(0.02)
        output = json.loads(status.get("output") or "{}")
        # A finished execution's history no longer changes: kept, so that reading it again (a
        # test looking for PHI in it, a benchmark counting transitions) costs nothing (moto takes
        # a third of a second to serialize a batch's).
        self._histories[arn] = self.history(arn)
        failures = [str(f.get("itemIdentifier")) for f in output.get("batchItemFailures") or []]
        paths = object_paths(self._histories[arn], output, self.key_of)
        return ExecutionReport(arn, status["status"], paths, failures)

    def _pipe_record(self, message: dict[str, Any]) -> dict[str, Any]:
        """An SQS message as an EventBridge Pipe hands it to its target."""
        return {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": message.get("Attributes", {}),
            "messageAttributes": {},
            "md5OfBody": message.get("MD5OfBody"),
            "eventSource": "aws:sqs",
            "eventSourceARN": self._queue_arn(self.queue_url),
            "awsRegion": REGION,
        }

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        if execution_arn in self._histories:
            return self._histories[execution_arn]
        events: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = self.sfn.get_execution_history(**kwargs)
            events += page["events"]
            if not page.get("nextToken"):
                return events
            kwargs["nextToken"] = page["nextToken"]

    # -- what came out --------------------------------------------------------------------------

    def research_objects(self, prefix: str = "studies/") -> dict[str, bytes]:
        return dict(self._objects(self.names.research_bucket, prefix))

    def _objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, bytes]]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"], self.s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()

    def download_research(self, destination: Path) -> list[Path]:
        """Copy the research bucket's studies/ tree into a local folder (write, then rename), with
        the index and catalog items beside it (INDEX_DUMP, CATALOG_DUMP): what `deidflow local api`
        serves, labels and frame locations included, which the files alone do not carry."""

        store = LocalStore(destination)
        files = [Path(store.put(key, data)) for key, data in self._objects(self.names.research_bucket, "studies/")]
        for name, table in ((INDEX_DUMP, self.names.index_table), (CATALOG_DUMP, self.names.catalog_table)):
            items = sorted(self.table_items(table), key=lambda i: json.dumps(i, sort_keys=True, default=str))
            store.put(name, "".join(json.dumps(i, sort_keys=True, default=_plain) + "\n" for i in items).encode())
        return files

    def table_items(self, table: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {}
        while True:
            page = self.dynamodb.Table(table).scan(**kwargs)
            items += page["Items"]
            if "LastEvaluatedKey" not in page:
                return items
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


_MOTO_S3_EVENT: Callable[..., Any] | None = None
_SEQUENCER = iter(range(1, 1 << 62))


_MOTO_DELETE: Callable[..., Any] | None = None
_MOTO_SEND: Callable[..., Any] | None = None
_DELETING = threading.local()


def _is_removal(event_name: Any) -> bool:
    """moto's event names are a str Enum, whose str() is its member name (Python 3.11)."""
    return str(getattr(event_name, "value", event_name)).startswith("s3:ObjectRemoved")


@dataclass(frozen=True)
class _Removed:
    """What moto's notification builder reads of a key, for a delete's event (AWS sends no size or
    ETag with one)."""

    name: str
    version_id: str | None
    size: int = 0
    etag: str = ""


def _as_aws_notifies(on: bool) -> None:
    """moto's S3 notifications are not quite what AWS sends, and the workflow relies on what AWS
    sends. While a LocalWorkflow runs they are:

    - every event carries `versionId` and `sequencer` (moto sends neither): the version-pinned
      read, newer versions winning over replays; the sequencer grows with every event as AWS's
      does per key;
    - a delete on a versioned bucket sends `ObjectRemoved:DeleteMarkerCreated` with the marker's
      version (moto sends nothing), a delete of one version `ObjectRemoved:Delete` with that
      version (moto sends one only when the key's last version goes, naming the latest), each
      without size or ETag, as AWS's removal events are."""
    import moto.s3.notifications as notifications
    from moto.s3.models import S3Backend

    global _MOTO_S3_EVENT, _MOTO_DELETE, _MOTO_SEND
    backend: Any = S3Backend  # patched where moto has no types to check against
    module: Any = notifications
    if on and _MOTO_S3_EVENT is None:
        original = _MOTO_S3_EVENT = notifications._get_s3_event  # noqa: SLF001 - the one place moto is corrected
        delete = _MOTO_DELETE = backend.delete_object
        removed = notifications.S3NotificationEvent

        def with_version(event_name: str, bucket: Any, key: Any, notification_id: str) -> Any:
            event = original(event_name, bucket, key, notification_id)
            obj = event["Records"][0]["s3"]["object"]
            if getattr(bucket, "is_versioned", False) and getattr(key, "version_id", None):
                obj["versionId"] = key.version_id
            if _is_removal(event_name):
                obj.pop("size", None)
                obj.pop("eTag", None)
            obj["sequencer"] = f"{next(_SEQUENCER):016X}"
            return event

        def notify_as_aws(self: Any, bucket_name: str, key_name: str, version_id: str | None = None, **kw: Any) -> Any:
            bucket = self.get_bucket(bucket_name)
            if not getattr(bucket, "is_versioned", False) or getattr(_DELETING, "on", False):
                return delete(self, bucket_name, key_name, version_id, **kw)
            _DELETING.on = True  # moto's own removal event (if any) is not sent: this one is
            try:
                deleted, meta = delete(self, bucket_name, key_name, version_id, **kw)
            finally:
                _DELETING.on = False
            if deleted:
                event = removed.OBJECT_REMOVED_DELETE_EVENT
                if version_id is None:
                    event = removed.OBJECT_REMOVED_DELETE_MARKER_CREATED_EVENT
                notifications.send_event(
                    self.account_id, event, bucket, _Removed(key_name, version_id or meta.get("version-id"))
                )
            return deleted, meta

        send = _MOTO_SEND = notifications.send_event

        def unless_deleting(account_id: str, event_name: Any, bucket: Any, key: Any) -> None:
            if getattr(_DELETING, "on", False) and _is_removal(event_name):
                return
            send(account_id, event_name, bucket, key)

        notifications._get_s3_event = with_version  # noqa: SLF001
        module.send_event = unless_deleting
        backend.delete_object = notify_as_aws
    elif not on and _MOTO_S3_EVENT is not None:
        notifications._get_s3_event = _MOTO_S3_EVENT  # noqa: SLF001
        module.send_event = _MOTO_SEND
        backend.delete_object = _MOTO_DELETE
        _MOTO_S3_EVENT = _MOTO_DELETE = _MOTO_SEND = None


_LISTED_PREFIX = threading.local()
_MOTO_ORIGINALS: dict[str, Any] = {}


def _moto_at_scale(on: bool) -> None:
    """Two of moto's costs that grow with a run, cut while a LocalWorkflow runs, with what moto
    answers unchanged:

    - moto lists a bucket's versions by deep-copying every version of every key, then filtering
      by the prefix: the version check before each read and publish (`Prefix=key`) grew with the
      bucket, and a drop of thousands of objects slowed to a crawl. Only the keys under the prefix
      are copied now (the prefix filter and the pagination markers look at each key on its own).
    - moto re-imports its S3 URL table on every S3 request (it may depend on the environment,
      which does not change during a run): it is read once.
    """
    from moto.s3.models import S3Backend
    from moto.s3.utils import _VersionedKeyStore

    backend: Any = S3Backend  # patched where moto has no types to check against
    store: Any = _VersionedKeyStore
    if on and not _MOTO_ORIGINALS:
        list_versions = _MOTO_ORIGINALS["list_object_versions"] = backend.list_object_versions
        url_module = _MOTO_ORIGINALS["_url_module"] = vars(backend)["_url_module"]
        all_lists = store._iterlists  # noqa: SLF001

        def list_object_versions(self: Any, bucket_name: str, *args: Any, **kwargs: Any) -> Any:
            _LISTED_PREFIX.value = kwargs.get("prefix") or ""
            try:
                return list_versions(self, bucket_name, *args, **kwargs)
            finally:
                _LISTED_PREFIX.value = ""

        def prefixed_lists(self: Any) -> Iterator[tuple[str, list[Any]]]:
            prefix = getattr(_LISTED_PREFIX, "value", "")
            return ((key, versions) for key, versions in all_lists(self) if key.startswith(prefix))

        loaded = url_module.fget(None)
        backend.list_object_versions = list_object_versions
        backend._url_module = property(lambda self: loaded)  # noqa: SLF001
        store.iterlists = prefixed_lists
    elif not on and _MOTO_ORIGINALS:
        backend.list_object_versions = _MOTO_ORIGINALS.pop("list_object_versions")
        backend._url_module = _MOTO_ORIGINALS.pop("_url_module")  # noqa: SLF001
        store.iterlists = store._iterlists  # noqa: SLF001


def lambda_answer(arn: str, call: Callable[[], Any]) -> tuple[Any, dict[str, Any]]:
    """What lambda:Invoke returns for `call()`: its result, or its exception as the Lambda error
    payload (errorType is the exception's class name, which Retry and Catch match on, as in AWS)."""
    from botocore.awsrequest import AWSResponse
    from botocore.response import StreamingBody

    response: dict[str, Any] = {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
    try:
        payload = call()
    except Exception as exc:  # noqa: BLE001 - becomes the Lambda error payload, as in AWS
        payload = {"errorMessage": str(exc), "errorType": type(exc).__name__, "stackTrace": []}
        response["FunctionError"] = "Unhandled"
    body = json.dumps(payload).encode()
    response["Payload"] = StreamingBody(io.BytesIO(body), len(body))
    return AWSResponse(arn, 200, {}, None), response


def _plain(value: Any) -> Any:
    """DynamoDB's Decimal numbers as JSON numbers (the index holds integers only)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(type(value).__name__)


def object_paths(
    events: Iterable[dict[str, Any]], output: dict[str, Any], key_of: Callable[[Any], str]
) -> list[ObjectPath]:
    """Per Map iteration, the states entered (from the execution history), and how each ended;
    `key_of` names the object of a payload's `source`."""
    events = list(events)
    by_id = {e["id"]: e for e in events}
    iteration_of: dict[int, int] = {}
    for event in events:
        if event["type"] == "MapIterationStarted":
            iteration_of[event["id"]] = event["mapIterationStartedEventDetails"]["index"]
    states: dict[int, list[str]] = {}
    for event in events:
        if not event["type"].endswith("StateEntered"):
            continue
        index = _iteration(event, by_id, iteration_of)
        if index is not None:
            states.setdefault(index, []).append(event["stateEnteredEventDetails"]["name"])
    paths = []
    for index, result in enumerate(output.get("results") or []):
        result = result or {}
        source = result.get("source") or {}
        status = str(result.get("status", "unknown"))
        detail = result.get("research_key") or result.get("reason")
        path = ["ExpandBatch", *states.get(index, [])]
        paths.append(ObjectPath(key_of(source) or "?", path, status, detail))
    for skipped in output.get("skipped") or []:
        key = key_of(skipped.get("source")) or f"(message {skipped.get('message_id')})"
        paths.append(ObjectPath(key, ["ExpandBatch"], "skipped", skipped.get("reason")))
    return paths


def _iteration(event: dict[str, Any], by_id: dict[int, dict[str, Any]], iteration_of: dict[int, int]) -> int | None:
    """The Map iteration an event belongs to: follow previousEventId back to its MapIterationStarted."""
    current: dict[str, Any] | None = event
    while current is not None:
        if current["id"] in iteration_of:
            return iteration_of[current["id"]]
        if current["type"] in _AFTER_MAP:  # a state after the Map, not inside one iteration
            return None
        current = by_id.get(current.get("previousEventId", 0))
    return None


_AFTER_MAP = frozenset({"MapStateExited", "MapStateSucceeded", "MapStateFailed", "MapStateAborted"})


@dataclass
class LambdaContext:
    invoked_function_arn: str
    function_name: str = ""
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 2048
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"

    def __post_init__(self) -> None:
        self.function_name = self.invoked_function_arn.rsplit(":", 1)[-1]

    def get_remaining_time_in_millis(self) -> int:
        return 300_000
