"""Cleaning free text (the C action for descriptors, SR text and graphics annotations).

Free text cannot be proven clean; what we can do is remove every identifier this very instance
carries (patient name parts, IDs, birth date in common spellings, accession, institution, staff
names, address and phone) wherever it appears in the text, case-insensitively.
"""

from __future__ import annotations

import re
from datetime import datetime

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

IDENTIFYING_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "AccessionNumber",
    "StudyID",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "OperatorsName",
    "PhysiciansOfRecord",
    "RequestingPhysician",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "MilitaryRank",
    "RegionOfResidence",
    "StationName",
    "IssuerOfPatientID",
    "PatientInsurancePlanCodeSequence",
    "AdmissionID",
    "ResponsiblePerson",
    "ResponsibleOrganization",
    "PersonName",
    "DeviceSerialNumber",
    "PatientBirthDate",
)
MIN_PART_LENGTH = 3
MASK = "***"


def _date_spellings(value: str) -> list[str]:
    try:
        moment = datetime.strptime(value.strip()[:8], "%Y%m%d")
    except ValueError:
        return []
    return [moment.strftime(fmt) for fmt in ("%Y%m%d", "%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y")]


def collect_identifiers(ds: Dataset) -> list[str]:
    """Identifying strings found in the top-level dataset, longest first."""
    found: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = ds.get(keyword)
        except Exception:  # noqa: BLE001 - an undecodable value cannot be collected
            continue
        if value is None or keyword.endswith("Sequence"):
            continue
        values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        for v in values:
            text = str(v).strip()
            if not text:
                continue
            if keyword == "PatientBirthDate":
                found.update(_date_spellings(text))
                continue
            found.add(text)
            found.update(p for p in re.split(r"[\^=\s,]+", text) if len(p) >= MIN_PART_LENGTH)
    return sorted(found, key=len, reverse=True)


def scrub_text(text: str, identifiers: list[str]) -> str:
    for identifier in identifiers:
        text = re.sub(re.escape(identifier), MASK, text, flags=re.IGNORECASE)
    return text
