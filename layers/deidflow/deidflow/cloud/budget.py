"""How long each state may take for one object, and the two lanes that decide it.

An Express execution ends at 5 minutes, and an execution that times out cannot be caught: its
whole batch would come back. So every object of an Express execution carries a deadline
(`source.deadline`, set by ExpandBatch) and a budget per state (`source.budget`, which the state
machine reads as each Task's TimeoutSecondsPath). A processing attempt starts only if it can
take its whole budget and still leave the reserve that Quarantine and Park need after it; when it
cannot, it raises OutOfTime, Park sends the object to the long lane (a Standard execution, no
5-minute limit, the Lambda timeouts as budgets), and the batch goes on. Objects too large for the
Express lane go there straight from ExpandBatch. With a STANDARD workflow there is one lane, long.

    lane     per-state budget (s)                               deadline
    express  Deidentify 60, Redact 150, Publish 30, Index 30,   ExpandBatch's clock + 290 s
             Withdraw 30, Quarantine 10, Park 10
    long     the functions' Lambda timeouts                     none
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

EXPRESS = "express"
LONG = "long"

EXPRESS_EXECUTION_SECONDS = 300
# Between ExpandBatch's clock and the execution's start (the Pipe's call), with room to spare.
ENRICHMENT_MARGIN_SECONDS = 10

# Each state's TimeoutSecondsPath, per lane. The long lane's are the template's Lambda timeouts
# (tests/workflow/test_budget.py holds the two to each other).
BUDGETS: dict[str, dict[str, int]] = {
    EXPRESS: {
        "DeidentifyHeader": 60,
        "RedactBurnedInText": 150,
        "Publish": 30,
        "IndexHeader": 30,
        "WithdrawSource": 30,
        "Quarantine": 10,
        "Park": 10,
    },
    LONG: {
        "DeidentifyHeader": 900,
        "RedactBurnedInText": 900,
        "Publish": 120,
        "IndexHeader": 60,
        "WithdrawSource": 60,
        "Quarantine": 30,
        "Park": 30,
    },
}
# The states that process an object; each attempt of one is checked against the deadline.
PROCESSING_STATES = ("DeidentifyHeader", "RedactBurnedInText", "Publish", "IndexHeader", "WithdrawSource")
# What must still fit after a processing attempt: Quarantine, then Park, each through all its
# retries (3 retries, delays of at most 2 + 4 + 8 s: the ASL's Retry of those two states).
LAST_RESORT_RETRIES = 3
LAST_RESORT_DELAYS_SECONDS = 2 + 4 + 8


def reserve_seconds(lane: str = EXPRESS) -> int:
    """The worst case of Quarantine then Park, retries included."""
    budget = BUDGETS[lane]
    return sum(budget[s] * (1 + LAST_RESORT_RETRIES) + LAST_RESORT_DELAYS_SECONDS for s in ("Quarantine", "Park"))


def express_deadline(now: float) -> float:
    """The deadline of an object whose execution ExpandBatch is about to hand to the Pipe."""
    return now + EXPRESS_EXECUTION_SECONDS - ENRICHMENT_MARGIN_SECONDS


def out_of_time(state: str, source: Mapping[str, Any], now: float) -> bool:
    """Whether an attempt of `state` started now could overrun the object's deadline."""
    deadline = source.get("deadline")
    if deadline is None or state not in PROCESSING_STATES:
        return False
    lane = str(source.get("lane") or EXPRESS)
    return now + BUDGETS[lane][state] + reserve_seconds(lane) > float(deadline)
