"""The billed AWS requests of a LocalWorkflow run, counted: by state, service and operation, and
DynamoDB's write and read units, so that a cost is arithmetic on counts rather than a guess.

    with LocalWorkflow(key) as workflow, RequestMeter(workflow) as meter:
        workflow.drop(...)
        workflow.run_pipe()
    meter.requests      # Counter of (state, service, operation) -> requests
    meter.write_units   # Counter of (state, table) -> DynamoDB write request units

What is counted, and whose it is:

- Every call a handler makes (an `after-call` hook on boto3's default session, the one the
  handlers' clients come from; the calls made while a handler runs, s3transfer's threads
  included, are that handler's, as in `testing.faults`). A call answered with an error is not
  billed, but for DynamoDB's failed conditions, which consume write units as a write does.
- What the services do for us outside a handler: each upload into the ingest bucket is one SQS
  SendMessage by the bucket's notification (state `S3 notification`; the upload itself is the
  hospital's, not counted), and the Pipe's polling: ReceiveMessage, DeleteMessageBatch and
  ChangeMessageVisibilityBatch on the ingest queue (state `Pipe`). The harness's other calls
  (reads of the end state) are not counted. Lambda invocations and Step Functions executions are
  priced from the workflow's own records (durations, histories), not here.
- DynamoDB units are computed from item sizes as DynamoDB bills them, moto reporting none: a
  write is ceil(larger of the item before and after / 1 KB) units, at least 1, and each global
  secondary index whose projection of the item changes adds ceil(projected size / 1 KB), twice
  when the index key changes (a delete and a put); a read is ceil(size / 4 KB), halved when
  eventually consistent. Item sizes are moto's (attribute names plus values); a Query is priced
  on the items it returns.

Laptop and CI tooling: never deployed (the Lambda layer leaves deidflow.testing out).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .faults import wrap_handlers

if TYPE_CHECKING:
    from ..local.workflow import LocalWorkflow

# S3's request price classes (us-east-1: PUT class $0.005 / 1,000, GET class $0.0004 / 1,000;
# DELETE is free). An operation in neither is reported as "other" so that a new one is noticed.
S3_PUT_CLASS = frozenset(
    {
        "PutObject",
        "CopyObject",
        "ListObjectVersions",
        "ListObjectsV2",
        "ListObjects",
        "PutObjectTagging",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPartCopy",
        "CompleteMultipartUpload",
    }
)
S3_GET_CLASS = frozenset({"GetObject", "HeadObject", "GetObjectTagging", "GetObjectAttributes"})
S3_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})

DYNAMODB_WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem"})
DYNAMODB_READS = frozenset({"GetItem", "Query", "Scan"})
PIPE_POLLING = frozenset({"ReceiveMessage", "DeleteMessageBatch", "ChangeMessageVisibilityBatch"})

NOTIFICATION, PIPE = "S3 notification", "Pipe"


def s3_class(operation: str) -> str:
    """ "put", "get", "free" or "other": which S3 price an operation is billed at."""
    if operation in S3_PUT_CLASS:
        return "put"
    if operation in S3_GET_CLASS:
        return "get"
    return "free" if operation in S3_FREE else "other"


class RequestMeter:
    """Use as a context manager around the runs to count, inside the LocalWorkflow."""

    def __init__(self, workflow: LocalWorkflow):
        self.workflow = workflow
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (state, service, operation)
        self.write_units: Counter[tuple[str, str]] = Counter()  # (state, table) -> write request units
        self.read_units: defaultdict[tuple[str, str], float] = defaultdict(float)
        self._current: str | None = None  # the state whose handler is running
        self._restore: list[Callable[[], None]] = []

    # -- what was counted -------------------------------------------------------------------------

    def count(self, service: str, operations: Iterable[str] | None = None, state: str | None = None) -> int:
        """Requests to `service` (of `operations`, in `state`, when given)."""
        wanted = None if operations is None else set(operations)
        return sum(
            n
            for (s, svc, op), n in self.requests.items()
            if svc == service and (wanted is None or op in wanted) and (state is None or s == state)
        )

    def s3_requests(self, price_class: str, state: str | None = None) -> int:
        return sum(
            n
            for (s, svc, op), n in self.requests.items()
            if svc == "s3" and s3_class(op) == price_class and (state is None or s == state)
        )

    # -- the hooks ----------------------------------------------------------------------------------

    def _in_handler(self, name: str, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def metered(event: Any, context: Any) -> Any:
            # LocalWorkflow runs one handler at a time: the calls made meanwhile are this one's.
            self._current = name
            try:
                return handler(event, context)
            finally:
                self._current = None

        return metered

    def _state_of(self, service: str, operation: str, context: Mapping[str, Any]) -> str | None:
        """Whose call this is: the running handler's, the bucket notification's or the Pipe's."""
        if self._current is not None:
            return self._current
        bucket = (context.get("input_params") or {}).get("Bucket")
        if service == "s3" and operation == "PutObject" and bucket == self.workflow.names.ingest_bucket:
            return NOTIFICATION
        if service == "sqs" and operation in PIPE_POLLING:
            return PIPE
        return None

    def _before_call(self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        service = model.service_model.endpoint_prefix
        state = self._state_of(service, model.name, context)
        if state is None:
            return
        context["deidflow_meter"] = state
        if service == "dynamodb" and model.name in DYNAMODB_WRITES | DYNAMODB_READS:
            body = json.loads(params.get("body") or b"{}")
            context["deidflow_meter_dynamodb"] = (body, _DynamoItems(body).before())
        elif service == "dynamodb" and model.name == "BatchGetItem":
            # Each item read is its own ceil(size / 4 KB), halved when eventually consistent.
            body = json.loads(params.get("body") or b"{}")
            for table, request in body.get("RequestItems", {}).items():
                half = 1 if request.get("ConsistentRead") else 0.5
                for key in request.get("Keys", []):
                    item = _DynamoItems({"TableName": table, "Key": key}).before()
                    if item is not None:
                        self.read_units[(state, table)] += _units(_size(item), 4096) * half

    def _after_call(
        self, http_response: Any, parsed: Mapping[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        state = context.get("deidflow_meter")
        if state is None:
            return
        service, operation = model.service_model.endpoint_prefix, model.name
        failed = http_response.status_code >= 300
        code = (parsed.get("Error") or {}).get("Code", "")
        if failed and code != "ConditionalCheckFailedException":
            return  # throttled or refused: not billed
        if state == NOTIFICATION:
            self.requests[(state, "sqs", "SendMessage")] += 1
            return
        self.requests[(state, service, operation)] += 1
        stashed = context.get("deidflow_meter_dynamodb")
        if stashed is None:
            return
        body, before = stashed
        items = _DynamoItems(body)
        table = str(body.get("TableName", ""))
        if operation in DYNAMODB_WRITES:
            self.write_units[(state, table)] += items.write_units(before, items.before(), failed=failed)
        else:
            self.read_units[(state, table)] += items.read_units(before, parsed)

    def __enter__(self) -> RequestMeter:
        import boto3

        # The handlers' clients come from the default session; the bucket notification's and the
        # Pipe's calls are the harness's own clients' (made before this).
        for events in (boto3.DEFAULT_SESSION.events, self.workflow.s3.meta.events, self.workflow.sqs.meta.events):
            for event, hook in (("before-call", self._before_call), ("after-call", self._after_call)):
                events.register_last(event, hook)
                self._restore.append(functools.partial(events.unregister, event, hook))
        wrap_handlers(self.workflow, self._in_handler, self._restore)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._restore:
            self._restore.pop()()


class _DynamoItems:
    """The item a DynamoDB request touches, as moto holds it (before or after the request)."""

    def __init__(self, body: Mapping[str, Any]):
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.dynamodb.models import dynamodb_backends

        region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        self.body = body
        self.table = dynamodb_backends[DEFAULT_ACCOUNT_ID][region].get_table(str(body.get("TableName")))

    def before(self) -> Any:
        """The item now (None when absent, or for a Query or Scan)."""
        from moto.dynamodb.models.dynamo_type import DynamoType

        key = self.body.get("Key") or self.body.get("Item")
        if key is None:
            return None
        hash_key = DynamoType(key[self.table.hash_key_attr])
        range_attr = self.table.range_key_attr
        range_key = DynamoType(key[range_attr]) if range_attr else None
        try:
            item = self.table.get_item(hash_key, range_key)
        except KeyError:
            return None
        return None if item is None else _copy(item)

    def write_units(self, before: Any, after: Any, *, failed: bool = False) -> int:
        if failed:  # a condition that failed: the table's units for the item as it is, no index write
            return _units(_size(before), 1024)
        units = _units(max(_size(before), _size(after)), 1024)
        for index in self.table.global_indexes:
            old, new = (_projected(index, item) for item in (before, after))
            if old is None and new is None:
                continue
            if old is None or new is None:
                units += _units(_size(old if new is None else new), 1024)
            elif _index_key(index, old) != _index_key(index, new):
                units += _units(_size(old), 1024) + _units(_size(new), 1024)
            elif old.to_json() != new.to_json():
                units += _units(max(_size(old), _size(new)), 1024)
        return units

    def read_units(self, before: Any, parsed: Mapping[str, Any]) -> float:
        consistent = bool(self.body.get("ConsistentRead"))
        if "Items" in parsed:
            size = sum(len(json.dumps(item, default=str)) for item in parsed["Items"])
        else:
            size = _size(before)
        return _units(size, 4096) * (1 if consistent else 0.5)


def _copy(item: Any) -> Any:
    import copy

    return copy.deepcopy(item)


def _size(item: Any) -> int:
    return 0 if item is None else int(item.size())


def _units(size: int, unit: int) -> int:
    return max(1, math.ceil(size / unit))


def _projected(index: Any, item: Any) -> Any:
    """The index's entry for `item`, or None when the item lacks the index's keys (sparse index)."""
    if item is None or any(attr not in item.attrs for attr in index.schema_key_attrs):
        return None
    return index.project(item)


def _index_key(index: Any, item: Any) -> tuple[Any, ...]:
    return tuple(json.dumps(item.attrs[attr].to_json(), sort_keys=True) for attr in index.schema_key_attrs)
