"""Throttling injected into a LocalWorkflow run: S3, DynamoDB, Lambda and the text detector answer
as AWS does when they throttle, at random or for chosen objects through all of a state's retries.

    with LocalWorkflow(key) as workflow, FaultInjector(workflow, FaultPlan(rate=0.03, seed=7)) as faults:
        workflow.drop(...)
        workflow.run_pipe()
    faults.injected  # Counter of (function, fault name) -> calls answered with it

What is faulted, and how:

- S3 and DynamoDB calls made by the handlers: a `before-call` hook on boto3's default session (the
  one the handlers' clients come from) answers the call with the service's throttling error
  (`SlowDown` / `ServiceUnavailable` 503, `ThrottlingException` / `ProvisionedThroughputExceededException`)
  instead of sending it to moto, so botocore raises the ClientError the handler would see once
  botocore's own retries are spent. The harness's own calls (drop, the Pipe stand-in, reads of
  the end state) are never faulted: only calls made while a handler runs are.
- Lambda: the state machine's lambda:Invoke answers 429 `TooManyRequestsException` before the
  handler runs (nothing runs, nothing is billed), which moto's interpreter reports, as Step
  Functions does, as `Lambda.TooManyRequestsException`.
- The text detector (Rekognition's place): its `detect` raises DetectorBusy as the Rekognition
  back-end does on a throttled DetectText.

Each call is faulted with probability `rate`, decided by a keyed hash of the call (object, state,
service, operation, how many such calls came before), so a seed gives the same faults whatever
order the Map's threads make their calls in. `stubborn` objects instead see every call of one
service in one state faulted in their first `stubborn_rounds` rounds: the state's retries run
out, the object is parked and comes back through the queue, where the fault has cleared.

The interpreter's waits between retries (2 s doubling to 30 s, full jitter) are real sleeps in
moto; they are scaled by `retry_wait_scale` (0 by default: the order of events is the same, the
run is not spent waiting) and what they would have been is kept in `retry_waits`.

Laptop and CI tooling: never deployed (the Lambda layer leaves deidflow.testing out).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..local.workflow import LocalWorkflow
    from ..pixels import TextDetector


@dataclass(frozen=True)
class Fault:
    """One kind of throttling answer: the service it comes from, its error code and HTTP status."""

    service: str  # s3 | dynamodb | lambda | detector
    code: str
    status: int
    message: str

    @property
    def name(self) -> str:
        return f"{self.service}.{self.code}"


S3_SLOW_DOWN = Fault("s3", "SlowDown", 503, "Please reduce your request rate.")
S3_UNAVAILABLE = Fault("s3", "ServiceUnavailable", 503, "Service is unable to handle request.")
DYNAMODB_THROTTLING = Fault("dynamodb", "ThrottlingException", 400, "Rate of requests exceeds the allowed throughput.")
DYNAMODB_PROVISIONED = Fault(
    "dynamodb",
    "ProvisionedThroughputExceededException",
    400,
    "The level of configured provisioned throughput for the table was exceeded.",
)
LAMBDA_TOO_MANY_REQUESTS = Fault("lambda", "TooManyRequestsException", 429, "Rate Exceeded.")
DETECTOR_THROTTLED = Fault("detector", "ThrottlingException", 400, "Rate exceeded")
FAULTS = (S3_SLOW_DOWN, S3_UNAVAILABLE, DYNAMODB_THROTTLING, DYNAMODB_PROVISIONED, LAMBDA_TOO_MANY_REQUESTS)
SERVICES = ("s3", "dynamodb", "lambda", "detector")
# The states a stubborn fault is put in: those that process one object (Quarantine and Park are
# faulted at random only: a stubborn Park would fail its execution, which is not this test's case).
STUBBORN_STATES = ("DeidentifyHeader", "RedactBurnedInText", "IndexHeader", "Publish")


@dataclass(frozen=True)
class FaultPlan:
    """Which calls are faulted. `rate`: the probability of each call (every service in
    `services`, in `states`); `stubborn`: S3 key -> (state, service) whose every call fails in the object's
    first `stubborn_rounds` rounds; `stubborn_share`: that share of the other objects is stubborn
    too, in a state and service drawn from the seed."""

    rate: float = 0.0
    seed: int = 0
    services: tuple[str, ...] = SERVICES
    states: tuple[str, ...] | None = None  # the states random faults hit (None: every state)
    stubborn: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    stubborn_share: float = 0.0
    stubborn_rounds: int = 1
    retry_wait_scale: float = 0.0


class FaultInjector:
    """Use as a context manager around the runs to fault, inside the LocalWorkflow."""

    def __init__(self, workflow: LocalWorkflow, plan: FaultPlan):
        self.workflow = workflow
        self.plan = plan
        self.injected: Counter[tuple[str, str]] = Counter()  # (state, fault name) -> calls
        self.injected_by_key: Counter[str] = Counter()  # S3 key -> calls faulted ("" for ExpandBatch's)
        # Every handler run: (state, S3 key or "", redrive round, seconds), for costing per object.
        self.runs: list[tuple[str, str, int, float]] = []
        self.retry_waits: list[float] = []  # seconds Step Functions would have waited, per retry
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, ...]] = Counter()
        self._current: tuple[str, Mapping[str, Any]] | None = None  # (state, source) of the running handler
        self._restore: list[Callable[[], None]] = []

    # -- deciding -------------------------------------------------------------------------------

    def _roll(self, *parts: object) -> float:
        digest = hashlib.sha256("\x1f".join(map(str, (self.plan.seed, *parts))).encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def stubborn_fault(self, key: str) -> tuple[str, str] | None:
        """(state, service) that fails all of this object's calls in its first rounds, or None."""
        if key in self.plan.stubborn:
            return self.plan.stubborn[key]
        if self.plan.stubborn_share and self._roll("stubborn", key) < self.plan.stubborn_share:
            states = [s for s in STUBBORN_STATES if s != "RedactBurnedInText"]
            services = [s for s in self.plan.services if s != "detector"]
            return states[int(self._roll("state", key) * len(states))], services[
                int(self._roll("service", key) * len(services))
            ]
        return None

    def _decide(self, state: str, source: Mapping[str, Any], service: str, operation: str) -> Fault | None:
        """The fault this call gets, if any; counted."""
        if service not in self.plan.services:
            return None
        key = self.workflow.key_of(source)
        stubborn = self.stubborn_fault(key) if key else None
        choices = [f for f in (*FAULTS, DETECTOR_THROTTLED) if f.service == service]
        with self._lock:
            # By key and call count, not version id (moto draws those at random): a seed replays.
            call = (key, state, service, operation)
            self._calls[call] += 1
            n = self._calls[call]
            randomly = self.plan.states is None or state in self.plan.states
            rounds = int(source.get("round") or 0) + int(source.get("waits") or 0)  # waits for capacity too
            if stubborn == (state, service) and rounds < self.plan.stubborn_rounds:
                fault: Fault | None = choices[0]
            elif randomly and self._roll("call", *call, n) < self.plan.rate:
                fault = choices[int(self._roll("which", *call, n) * len(choices))]
            else:
                fault = None
            if fault is not None:
                self.injected[(state, fault.name)] += 1
                self.injected_by_key[key] += 1
            return fault

    # -- the hooks ------------------------------------------------------------------------------

    def _in_handler(self, name: str, handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        def faulted(event: Any, context: Any) -> Any:
            source = event.get("source", {}) if isinstance(event, dict) else {}
            # LocalWorkflow runs one handler at a time: the calls made meanwhile (s3transfer's
            # threads included) are this handler's.
            source = source if isinstance(source, Mapping) else {}
            self._current = (name, source)
            started = time.perf_counter()
            try:
                return handler(event, context)
            finally:
                self._current = None
                self.runs.append(
                    (name, self.workflow.key_of(source), int(source.get("round") or 0), time.perf_counter() - started)
                )

        return faulted

    def _before_call(self, params: dict[str, Any], model: Any, **_: Any) -> tuple[Any, dict[str, Any]] | None:
        current = self._current
        if current is None:
            return None  # the harness's own call, or a client no handler uses
        service = model.service_model.endpoint_prefix
        fault = self._decide(current[0], current[1], service, model.name)
        return None if fault is None else _error_answer(fault)

    def _before_invoke(self, params: dict[str, Any], **_: Any) -> tuple[Any, dict[str, Any]] | None:
        name, _arn, event = self.workflow.invoked(params)
        source = event.get("source", {}) if isinstance(event, dict) else {}
        fault = self._decide(name, source if isinstance(source, Mapping) else {}, "lambda", "Invoke")
        return None if fault is None else _error_answer(fault)

    def busy(self) -> None:
        """Called by the detector before each frame: raises DetectorBusy when the call is faulted."""
        from ..pixels import DetectorBusy

        current = self._current
        if current is not None:
            fault = self._decide(current[0], current[1], "detector", "DetectText")
            if fault is not None:
                raise DetectorBusy(f"Rekognition DetectText is busy: {fault.code}")

    # -- installing -----------------------------------------------------------------------------

    def __enter__(self) -> FaultInjector:
        import boto3
        import moto.stepfunctions.parser.asl.component.common.retry.retrier_decl as retrier

        from ..cloud import services as services_module

        events = boto3.DEFAULT_SESSION.events
        for event in ("before-call.s3", "before-call.dynamodb"):
            events.register_first(event, self._before_call)
            self._restore.append(functools.partial(events.unregister, event, self._before_call))
        # Before LocalWorkflow's own answer to lambda:Invoke, which runs the handler.
        events.register_first("before-call.lambda.Invoke", self._before_invoke)
        self._restore.append(lambda: events.unregister("before-call.lambda.Invoke", self._before_invoke))

        edge_detector = services_module.edge_detector

        def busy_detector(name: str, session: Any = None) -> TextDetector:
            return _BusyDetector(edge_detector(name, session), self)

        services_module.edge_detector = busy_detector
        self._restore.append(lambda: setattr(services_module, "edge_detector", edge_detector))

        clock = retrier.time
        retrier.time = _ScaledClock(self.plan.retry_wait_scale, self.retry_waits, clock.sleep)  # type: ignore[assignment]
        self._restore.append(lambda: setattr(retrier, "time", clock))

        wrap_handlers(self.workflow, self._in_handler, self._restore)
        return self

    def __exit__(self, *exc: object) -> None:
        while self._restore:
            self._restore.pop()()


def wrap_handlers(
    workflow: LocalWorkflow,
    wrap: Callable[[str, Callable[[Any, Any], Any]], Callable[[Any, Any], Any]],
    restore: list[Callable[[], None]],
) -> None:
    """Each of the workflow's handlers through `wrap(name, handler)`, the handlers' clients made
    anew from the session that now carries the caller's hooks (and again on the way out, so that
    none made here keeps them); `restore` gets what undoes it, to run in reverse."""
    from ..cloud.handler import reset_services

    handlers = dict(workflow.handlers)
    for name, handler in handlers.items():
        workflow.handlers[name] = wrap(name, handler)
    restore.append(lambda: workflow.handlers.update(handlers))
    reset_services()
    restore.append(reset_services)


class _BusyDetector:
    """The real detector, throttled when the injector says so."""

    def __init__(self, detector: TextDetector, injector: FaultInjector):
        self._detector = detector
        self._injector = injector
        self.name = detector.name

    def read(self, frame_rgb8: Any) -> Any:
        self._injector.busy()
        return self._detector.read(frame_rgb8)


class _ScaledClock:
    """What moto's retrier sees as the `time` module: its waits recorded, and slept scaled."""

    def __init__(self, scale: float, waits: list[float], sleep: Callable[[float], None]):
        self._scale = scale
        self._waits = waits
        self._sleep = sleep

    def sleep(self, seconds: float) -> None:
        self._waits.append(seconds)
        if self._scale > 0:
            self._sleep(seconds * self._scale)


def _error_answer(fault: Fault) -> tuple[Any, dict[str, Any]]:
    """What botocore makes a ClientError of: an HTTP response with the fault's status, and the
    parsed error (code, message, request id) as the service's error parser gives it."""
    from botocore.awsrequest import AWSResponse

    request_id = str(uuid.uuid4())
    headers = {"x-amzn-RequestId": request_id}
    parsed = {
        "Error": {"Code": fault.code, "Message": fault.message},
        "ResponseMetadata": {"RequestId": request_id, "HTTPStatusCode": fault.status, "HTTPHeaders": headers},
    }
    return AWSResponse("https://throttled.invalid/", fault.status, headers, None), parsed
