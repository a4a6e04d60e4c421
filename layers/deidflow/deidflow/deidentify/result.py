"""What the pass gives back: the data set, and for `explain`, what happened to each element and why."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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


@dataclass(frozen=True)
class SourceIdentifiers:
    """The original identifiers an honest broker maps the pseudonyms back to: only the engine sees
    them beside the pseudonyms, so it hands them out (the cloud's mapping table stores them; nothing
    else may)."""

    patient_id: str
    issuer_of_patient_id: str
    accession_number: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str

    def columns(self) -> dict[str, str]:
        """As the mapping table's original_* attributes."""
        return {f"original_{name}": value for name, value in asdict(self).items()}


@dataclass
class DeidResult:
    dataset: Dataset
    plan: InstancePlan
    study_uid: str
    series_uid: str
    sop_uid: str
    originals: SourceIdentifiers
    decisions: list[Decision] = field(default_factory=list)
