"""The one way the engine says no: an input that produces no output, with a reason."""

from __future__ import annotations


class Rejected(Exception):
    """An input that produces no output. `reason` is a stable code, `detail` a PHI-free sentence."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Unavailable(Exception):
    """A service the engine needs is busy or unreachable for now: no verdict on the input, which is
    worth processing again later (the workflow retries, then parks it; never a quarantine)."""
