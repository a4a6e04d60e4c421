"""The cohort and export jobs on this machine: their real state machines on moto's interpreter.

`statemachines/cohort.asl.json` and `export.asl.json` run on moto's Step Functions interpreter
(Distributed Map included); each Lambda task of theirs calls `functions/research_jobs/app.py`
in-process, one call at a time, as a Lambda container would. `deidflow local api` and the tests
use it; nothing here is deployed.

A test can inject a fault before any step (`fault`): raise to make that invocation fail as a Lambda
error, which the state machine's Retry and Catch then see.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .workflow import LambdaContext, lambda_answer, load_module

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
JOBS_FUNCTION = "ResearchJobsFunction"
# The template's logical ids -> their definitions.
STATE_MACHINES = {
    "CohortStateMachine": Path("statemachines") / "cohort.asl.json",
    "ExportStateMachine": Path("statemachines") / "export.asl.json",
}


class LocalJobRunner:
    """Creates the job state machines in moto and answers their lambda:Invoke calls in-process."""

    function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:deidflow-research-jobs"

    def __init__(self, project: Path, sfn: Any, *, stack: str = "deidflow-local"):
        self.project = project
        self.sfn = sfn
        self.stack = stack
        self.handler: Callable[[Any, Any], Any] | None = None  # loaded with the environment in place
        self.fault: Callable[[dict[str, Any]], None] | None = None
        self.invocations: list[dict[str, Any]] = []  # every step's event, in call order
        self._lock = threading.Lock()
        self.arns: dict[str, str] = {}

    def state_machine_arn(self, logical_id: str) -> str:
        return f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:{self.stack}-{logical_id}"

    def create_state_machines(self) -> dict[str, str]:
        self.handler = load_module(self.project / "functions" / "research_jobs" / "app.py").handler
        for logical_id, path in STATE_MACHINES.items():
            definition = (self.project / path).read_text().replace("${ResearchJobsFunctionArn}", self.function_arn)
            self.arns[logical_id] = self.sfn.create_state_machine(
                name=f"{self.stack}-{logical_id}",
                definition=definition,
                roleArn=f"arn:aws:iam::{ACCOUNT}:role/{self.stack}-{logical_id}",
                type="STANDARD",
            )["stateMachineArn"]
            assert self.arns[logical_id] == self.state_machine_arn(logical_id)
        return dict(self.arns)

    def install(self, session: Any) -> None:
        """Answer lambda:Invoke made through `session` (the one moto's interpreter uses: boto3's default)."""
        session.events.register("before-call.lambda.Invoke", self._invoke)

    def uninstall(self, session: Any) -> None:
        session.events.unregister("before-call.lambda.Invoke", self._invoke)

    def _invoke(self, params: dict[str, Any], **_: Any) -> Any:
        arn = unquote(params["url_path"].split("/functions/", 1)[1].split("/", 1)[0])
        if arn != self.function_arn:
            return None  # not ours: let the call go on
        event = json.loads(params.get("body") or b"null")
        with self._lock, contextlib.redirect_stdout(io.StringIO()):
            self.invocations.append(event)

            def call() -> Any:
                if self.fault is not None:
                    self.fault(event)
                assert self.handler is not None
                return self.handler(event, LambdaContext(arn))

            return lambda_answer(arn, call)

    def wait(self, execution_arn: str, *, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.sfn.describe_execution(executionArn=execution_arn)
            if status["status"] != "RUNNING":
                return dict(status)
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution still running after {timeout:.0f} s")
            time.sleep(0.05)
