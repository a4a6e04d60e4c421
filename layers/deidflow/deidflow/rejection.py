"""The one way the engine says no: an input that produces no output, with a reason."""

from __future__ import annotations


class Rejected(Exception):
    """An input that produces no output. `reason` is a stable code, `detail` a PHI-free sentence."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
