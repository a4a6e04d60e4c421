"""The time budgets of cloud/budget.py against the state machine and the template: every state's
timeout is the object's budget in its lane, the long lane's budgets are the Lambda timeouts, and
an Express execution cannot reach its 5 minutes (the case an execution timeout would make: a
whole batch back on the queue for one slow object)."""

from __future__ import annotations

import json

import pytest
from deidflow.cloud.budget import (
    BUDGETS,
    ENRICHMENT_MARGIN_SECONDS,
    EXPRESS,
    EXPRESS_EXECUTION_SECONDS,
    LAST_RESORT_DELAYS_SECONDS,
    LAST_RESORT_RETRIES,
    LONG,
    PROCESSING_STATES,
    express_deadline,
    out_of_time,
    reserve_seconds,
)

from tests.conftest import REPO


@pytest.fixture(scope="module")
def tasks() -> dict[str, dict]:
    asl = json.loads((REPO / "statemachines" / "deidentify.asl.json").read_text())
    inner = asl["States"]["ProcessObjects"]["ItemProcessor"]["States"]
    return {name: state for name, state in inner.items() if state["Type"] == "Task"}


def test_every_task_times_out_at_the_objects_budget(tasks):
    assert set(tasks) == set(BUDGETS[EXPRESS]) == set(BUDGETS[LONG])
    for name, state in tasks.items():
        assert state["TimeoutSecondsPath"] == f"$.source.budget.{name}"
        assert "TimeoutSeconds" not in state


def test_the_long_lane_budgets_are_the_lambda_timeouts(resources):
    for state, seconds in BUDGETS[LONG].items():
        assert resources[f"{state}Function"]["Properties"]["Timeout"] == seconds, state
    for state, seconds in BUDGETS[EXPRESS].items():
        assert seconds <= BUDGETS[LONG][state], state


def test_the_reserve_is_what_quarantine_and_park_take_through_their_retries(tasks):
    for name in ("Quarantine", "Park"):
        [retry] = tasks[name]["Retry"]
        assert retry["MaxAttempts"] == LAST_RESORT_RETRIES
        delays = [
            min(retry["MaxDelaySeconds"], retry["IntervalSeconds"] * retry["BackoffRate"] ** n)
            for n in range(retry["MaxAttempts"])
        ]
        assert sum(delays) == LAST_RESORT_DELAYS_SECONDS  # full jitter: each wait is at most this
    assert reserve_seconds() == sum(
        BUDGETS[EXPRESS][s] * (1 + LAST_RESORT_RETRIES) + LAST_RESORT_DELAYS_SECONDS for s in ("Quarantine", "Park")
    )


def test_an_express_execution_ends_before_its_five_minutes():
    """The deadline is ExpandBatch's clock + 290 s; every processing attempt can start at the
    beginning (its budget and the reserve fit), and none starts unless it fits."""
    for state in PROCESSING_STATES:
        assert BUDGETS[EXPRESS][state] + reserve_seconds() <= EXPRESS_EXECUTION_SECONDS - ENRICHMENT_MARGIN_SECONDS
    now = 1_000_000.0
    deadline = express_deadline(now)
    assert deadline == now + EXPRESS_EXECUTION_SECONDS - ENRICHMENT_MARGIN_SECONDS
    source = {"lane": EXPRESS, "deadline": deadline}
    for state in PROCESSING_STATES:
        latest = deadline - BUDGETS[EXPRESS][state] - reserve_seconds()
        assert not out_of_time(state, source, latest)
        assert out_of_time(state, source, latest + 0.001)
    # Quarantine and Park always run (they are the reserve); the long lane has no deadline.
    assert not out_of_time("Park", source, deadline + 1)
    assert not out_of_time("RedactBurnedInText", {"lane": LONG}, now + 10**6)


def test_the_long_lane_is_the_same_workflow_as_a_standard_state_machine(resources):
    express = resources["DeidentifyStateMachine"]["Properties"]
    long_lane = resources["DeidentifyLongStateMachine"]["Properties"]
    assert long_lane["Type"] == "STANDARD" and long_lane["DefinitionUri"] == express["DefinitionUri"]
    substitutions = dict(express["DefinitionSubstitutions"], WorkflowType="STANDARD")
    assert long_lane["DefinitionSubstitutions"] == substitutions
    assert long_lane["Policies"] == express["Policies"]
    assert long_lane["Logging"]["Destinations"] == [
        {"CloudWatchLogsLogGroup": {"LogGroupArn": {"Fn::GetAtt": ["LongLaneLogGroup", "Arn"]}}}
    ]
    # Who may start it: the two functions that send objects there, by its name.
    name = {"Fn::Sub": "${AWS::StackName}-deidentify-long"}
    assert long_lane["Name"] == name
    for function in ("ExpandBatch", "Park"):
        props = resources[f"{function}Function"]["Properties"]
        arn = props["Environment"]["Variables"]["LONG_LANE_STATE_MACHINE_ARN"]["Fn::Sub"]
        assert arn.endswith(":stateMachine:${AWS::StackName}-deidentify-long")
        statements = [s for p in props["Policies"] for s in p["Statement"]]
        assert {"Effect": "Allow", "Action": "states:StartExecution", "Resource": {"Fn::Sub": arn}} in statements
