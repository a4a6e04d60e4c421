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
        self._redrives = 0

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

    def status_change_event(self, execution_arn: str) -> dict[str, Any]:
        """The "Execution Status Change" event Step Functions would put on the default bus for
        this execution as it stands (moto puts none), as the template's rule hands it to the jobs function."""
        execution = self.sfn.describe_execution(executionArn=execution_arn)
        return {
            "version": "0",
            "source": "aws.states",
            "detail-type": "Step Functions Execution Status Change",
            "account": ACCOUNT,
            "region": REGION,
            "resources": [execution_arn],
            "detail": {
                "executionArn": execution_arn,
                "stateMachineArn": execution["stateMachineArn"],
                "name": execution.get("name"),
                "status": execution["status"],
                "input": execution.get("input"),
                "error": execution.get("error"),
                "cause": execution.get("cause"),
            },
        }

    def deliver_status_change(self, execution_arn: str) -> Any:
        """The template's JobExecutionStatus rule, by hand: the event to the jobs function."""
        event = self.status_change_event(execution_arn)
        assert self.handler is not None
        with self._lock, contextlib.redirect_stdout(io.StringIO()):
            return self.handler(event, LambdaContext(self.function_arn))

    def redrive(self, execution_arn: str, from_state: str | None = None) -> str:
        """RedriveExecution, which moto lacks: the definition again from the state that failed, with
        the input that state was given (its StateEntered event), as a new execution; its ARN.

        As on AWS, what succeeded before that state is not rerun. Unlike AWS, a redriven Distributed
        Map reruns all its items, not only the failed ones: a stricter test of the steps' idempotence.
        `from_state` names the state for what moto does not show: its Distributed Map Run succeeds
        when a child execution fails (on AWS, with no tolerated failures, the Map fails there)."""
        execution = self.sfn.describe_execution(executionArn=execution_arn)
        if execution["status"] not in ("FAILED", "TIMED_OUT", "ABORTED"):
            raise ValueError(f"a {execution['status']} execution is not redriven")
        entered: dict[str, str] = {}
        open_states: list[str] = []
        kwargs: dict[str, Any] = {"executionArn": execution_arn, "maxResults": 1000}
        while True:
            page = self.sfn.get_execution_history(**kwargs)
            for event in page["events"]:
                if "stateEnteredEventDetails" in event:
                    details = event["stateEnteredEventDetails"]
                    entered[details["name"]] = details.get("input") or "{}"
                    open_states.append(details["name"])
                elif "stateExitedEventDetails" in event:
                    name = event["stateExitedEventDetails"]["name"]
                    if name in open_states:
                        open_states.remove(name)
            if not page.get("nextToken"):
                break
            kwargs["nextToken"] = page["nextToken"]
        failed = from_state or (open_states[-1] if open_states else "")
        if failed not in entered:
            raise ValueError("the execution has no state that failed" if not failed else f"{failed} never ran")
        machine = self.sfn.describe_state_machine(stateMachineArn=execution["stateMachineArn"])
        definition = json.loads(machine["definition"])
        definition["StartAt"] = failed
        self._redrives += 1
        redriven = self.sfn.create_state_machine(
            name=f"{machine['name']}-redrive-{self._redrives}",
            definition=json.dumps(definition),
            roleArn=machine["roleArn"],
            type="STANDARD",
        )["stateMachineArn"]
        return str(self.sfn.start_execution(stateMachineArn=redriven, input=entered[failed])["executionArn"])

    def wait(self, execution_arn: str, *, timeout: float = 300.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            status = self.sfn.describe_execution(executionArn=execution_arn)
            if status["status"] != "RUNNING":
                return dict(status)
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution still running after {timeout:.0f} s")
            time.sleep(0.05)
