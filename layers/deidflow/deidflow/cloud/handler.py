"""One Lambda handler shape for every step: powertools logging, tracing and metrics around a step.

`functions/<step>/app.py` is `handler = lambda_handler(steps.<step>)`. Logs carry the object's keyed
reference (`object_ref`, never its S3 key: keys are PHI), the step's outcome and reasons; never
header values (the steps never return any). Traces and metrics carry no key either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

from .budget import out_of_time
from .errors import OutOfTime, classify, workflow_errors
from .services import Services, Settings

Step = Callable[[Any, Services], dict[str, Any]]

# The template sets POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE; these defaults keep
# tests and the local workflow working without them.
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "deidflow"))
# No auto-patching: a patched botocore would record S3 calls' parameters in X-Ray, the object key
# among them (aws_xray_sdk's whitelist: GetObject, PutObject, CopyObject, *ObjectTagging carry Key).
# The handler's own segment (duration, cold start, errors) is still traced.
tracer = Tracer(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "deidflow"), auto_patch=False)
metrics = Metrics(
    namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "deidflow"),
    service=os.environ.get("POWERTOOLS_SERVICE_NAME", "deidflow"),  # the alarms' dimension
)
_services: Services | None = None


def current_services() -> Services:
    """Made on the first invocation of a container, then reused (clients, key, rules, engine)."""
    global _services
    if _services is None:
        _services = Services(Settings.from_env())
    return _services


def reset_services() -> None:
    """Forget the container's clients and key (tests and the local workflow start fresh)."""
    global _services
    _services = None


def lambda_handler(step: Step) -> Callable[[Any, Any], dict[str, Any]]:
    @logger.inject_lambda_context(log_event=False)
    @tracer.capture_lambda_handler(capture_response=False)
    @metrics.log_metrics
    @workflow_errors
    def handler(event: Any, context: Any) -> dict[str, Any]:
        try:
            _within_deadline(step.__name__, event)
            result = step(event, current_services())
        except Exception as exc:
            # The state machine decides what happens next (retry or quarantine); this counts it.
            metrics.add_metric("StepErrors", MetricUnit.Count, 1)
            metrics.add_metadata("error", type(classify(exc)).__name__)
            raise
        _observe(step.__name__, result)
        return result

    handler.__name__ = step.__name__
    return handler


def _within_deadline(step_name: str, event: Any) -> None:
    """An attempt that could overrun the object's Express deadline does not start (budget.py)."""
    state = "".join(part.title() for part in step_name.split("_"))
    source = event.get("source") if isinstance(event, Mapping) else None
    if isinstance(source, Mapping) and out_of_time(state, source, time.time()):
        raise OutOfTime(f"{state} cannot finish before the Express deadline")


def _observe(step_name: str, result: Mapping[str, Any]) -> None:
    """One log line and the step's metrics, from the small dict the step returns."""
    source = result.get("source") or {}
    logger.info(
        step_name,
        extra={
            "object_ref": source.get("ref"),
            "version_id": source.get("version_id"),
            "status": result.get("status"),
            "reason": result.get("reason"),
            "needs_pixel_scan": result.get("needs_pixel_scan"),
        },
    )
    if step_name == "expand_batch":
        metrics.add_metric("ObjectsReceived", MetricUnit.Count, len(result.get("objects", [])))
        metrics.add_metric("ObjectsSkipped", MetricUnit.Count, len(result.get("skipped", [])))
    elif step_name == "deidentify_header":
        scan = bool(result.get("needs_pixel_scan"))
        metrics.add_metric("PixelScansNeeded" if scan else "HeadersDeidentified", MetricUnit.Count, 1)
        # What needs no scan it publishes itself: counted as Publish counts it (a duplicate as a skip).
        if result.get("status") in ("published", "duplicate"):
            published = result["status"] == "published"
            metrics.add_metric("ObjectsPublished" if published else "ObjectsSkipped", MetricUnit.Count, 1)
    elif step_name == "redact_burned_in_text":
        metrics.add_metric("PixelScans", MetricUnit.Count, 1)
        if (result.get("pixels") or {}).get("redacted"):
            metrics.add_metric("InstancesRedacted", MetricUnit.Count, 1)
    elif step_name == "index_header":
        metrics.add_metric("InstancesIndexed", MetricUnit.Count, 1)
    elif step_name == "withdraw_source" and result.get("status") == "withdrawn":
        metrics.add_metric("ObjectsWithdrawn", MetricUnit.Count, 1)
    elif step_name == "withdraw_source" and result.get("status") == "source_deleted":
        metrics.add_metric("ObjectsMarkedSourceDeleted", MetricUnit.Count, 1)
    elif result.get("status") == "published":
        metrics.add_metric("ObjectsPublished", MetricUnit.Count, 1)
    elif result.get("status") == "quarantined":
        metrics.add_metric("ObjectsQuarantined", MetricUnit.Count, 1)
        metrics.add_metadata("reason", result.get("reason"))
    elif result.get("status") in ("parked", "stalled"):  # ObjectsStalled: the dead-letter queue's alarm too
        metrics.add_metric("ObjectsParked" if result["status"] == "parked" else "ObjectsStalled", MetricUnit.Count, 1)
        metrics.add_metadata("error", result.get("reason"))
    else:  # a quarantine step that found the object gone, a delete that withdrew nothing: a skip
        metrics.add_metric("ObjectsSkipped", MetricUnit.Count, 1)
