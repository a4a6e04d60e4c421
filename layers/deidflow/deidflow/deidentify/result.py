"""What the pass gives back: the data set, and for `explain`, what happened to each element and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from ..rules import InstancePlan


@dataclass(frozen=True)
class Decision:
    """What happened to one element and why; `explain` prints these (never values)."""

    path: str
    keyword: str
    vr: str
    action: str
    decided_by: str


@dataclass
class DeidResult:
    dataset: Dataset
    plan: InstancePlan
    study_uid: str
    series_uid: str
    sop_uid: str
    decisions: list[Decision] = field(default_factory=list)
