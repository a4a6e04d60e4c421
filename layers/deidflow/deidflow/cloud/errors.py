"""The errors a workflow step may raise, named for the state machine's Retry and Catch.

Step Functions sees a Lambda exception as its class name (errorType) and its message (Cause), so
the names below are part of the contract with `statemachines/deidentify.asl.json`:

- RejectedObject: the object cannot be de-identified (not DICOM, too large, unsupported...). Never
  retried; caught and quarantined with its reason.
- TransientError: throttling, a 5xx, a dropped connection. Retried with backoff and jitter.
- ProcessingError: anything else. Not retried (a bug does not heal by itself); quarantined.
- OutOfTime: the object's Express deadline is too near for the attempt; parked into the long lane.

Messages carry reason codes, AWS error codes and exception class names only, never header values:
the Cause lands in the execution history and in CloudWatch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from ..rejection import Rejected, Unavailable

F = TypeVar("F", bound=Callable[..., Any])

# AWS error codes worth a retry: throttling and server-side trouble.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "ThrottledException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "TransactionConflictException",
    }
)
# Of those, the ones that say "not now, too many": capacity, not a fault (backpressure).
THROTTLING_CODES = frozenset(
    {
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "SlowDown",
        "ThrottledException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
# The object went away between the notification and the read: nothing to clean, record and move on.
MISSING_CODES = frozenset({"NoSuchKey", "NoSuchVersion", "404", "NotFound"})


class RejectedObject(Rejected):
    """The engine's Rejected as the state machine sees it: not retried, quarantined. The message is
    JSON, {"reason": code, "detail": PHI-free sentence}, with the research key the object would
    have had when that says something (a conflict)."""

    def __init__(self, reason: str, detail: str, *, research_key: str | None = None):
        super().__init__(reason, detail)
        payload = {"reason": reason, "detail": detail}
        if research_key:
            payload["research_key"] = research_key
        self.args = (json.dumps(payload, sort_keys=True),)  # what Step Functions gets as the Cause
        self.research_key = research_key


class TransientError(Exception):
    """Retried by the state machine with exponential backoff and full jitter."""


class ProcessingError(Exception):
    """Unexpected failure; quarantined as `internal_error` without retries."""


class OutOfTime(Exception):
    """An attempt could overrun its Express execution's deadline (budget.py): not retried; Park
    sends the object to the long lane."""


def is_transient(exc: BaseException) -> bool:
    """Throttling, a 5xx or a dropped connection: worth the same call again later."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    return isinstance(exc, ConnectionError | HTTPClientError)


def classify(exc: BaseException) -> Exception:
    """The workflow error an exception stands for, with a message free of header values."""
    if isinstance(exc, RejectedObject | TransientError | ProcessingError | OutOfTime):
        return exc
    if isinstance(exc, Unavailable):
        return TransientError(str(exc)[:200])
    if isinstance(exc, Rejected):
        return RejectedObject(exc.reason, exc.detail)
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        operation = exc.operation_name
        if code in MISSING_CODES:
            return RejectedObject("missing", f"the object is gone ({operation}: {code})")
        if is_transient(exc):
            return TransientError(f"{operation}: {code or status}")
        return ProcessingError(f"{operation}: {code or status}")
    if is_transient(exc):
        return TransientError(type(exc).__name__)
    if isinstance(exc, BotoCoreError):
        return ProcessingError(type(exc).__name__)
    if isinstance(exc, MemoryError):
        return RejectedObject("too_large", "the object did not fit in the function's memory")
    return ProcessingError(type(exc).__name__)


def workflow_errors(func: F) -> F:
    """Re-raise whatever `func` raises as one of the workflow errors, without its chain.

    `from None` matters: the Lambda runtime prints the chained original, whose message may quote a
    value from the file.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a named, PHI-free workflow error
            raise classify(exc) from None

    return wrapper  # type: ignore[return-value]


def is_throttling(error: dict[str, Any]) -> bool:
    """Whether a Catch's {"Error", "Cause"} says a service had no capacity (Lambda's concurrency,
    Rekognition's or S3's request rate, DynamoDB's throughput) rather than that something failed."""
    name = str(error.get("Error", ""))
    if name == "Lambda.TooManyRequestsException":
        return True
    if name != "TransientError":
        return False
    _, message, _ = rejection_from_error(error)  # our TransientError names the AWS error code
    return any(code in message for code in THROTTLING_CODES)


def reason_from_error(error: dict[str, Any]) -> tuple[str, str]:
    """(reason, detail) from a Catch's {"Error", "Cause"}; Cause is the Lambda's error payload."""
    reason, detail, _ = rejection_from_error(error)
    return reason, detail


def rejection_from_error(error: dict[str, Any]) -> tuple[str, str, str | None]:
    """(reason, detail, research key or None) from a Catch's {"Error", "Cause"}."""
    name = str(error.get("Error", "")) or "unknown"
    cause = error.get("Cause") or ""
    message = ""
    try:
        payload = json.loads(cause) if isinstance(cause, str) else cause
        message = str(payload.get("errorMessage", "")) if isinstance(payload, dict) else ""
    except ValueError:
        message = ""
    if name == "RejectedObject":
        try:
            parsed = json.loads(message)
            research_key = parsed.get("research_key")
            return str(parsed["reason"]), str(parsed["detail"]), str(research_key) if research_key else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return "rejected", "the step rejected the object", None
    if name == "ProcessingError":
        return "internal_error", message[:200] or "unexpected failure", None
    if name == "TransientError":
        return "retries_exhausted", message[:200] or "transient failures outlasted the retries", None
    if name.startswith("States.") or name.startswith("Lambda."):
        # Timeouts, out-of-memory kills and service errors: the name is the useful part.
        return "step_failed", name, None
    return "internal_error", name, None
