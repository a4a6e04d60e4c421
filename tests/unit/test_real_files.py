"""Files nobody here wrote: pydicom's test files, deid-data, and the real DICOM other PyPI and Debian
packages ship (tests/realfiles.py).

Each one is de-identified or rejected with a reason, never a crash; what comes out is readable DICOM
with new UIDs and none of the original patient's name or ID.
"""

from __future__ import annotations

from pathlib import Path

import deid_data
import pydicom
import pydicom.data
import pytest
from deidflow.intake import Rejected

from ..realfiles import missing_sources, real_files

PYDICOM_DATA = Path(pydicom.data.__file__).parent
REAL_FILES = sorted(
    [*real_files(), *(p for p in (Path(deid_data.__file__).parent / "data").rglob("*.zip") if p.is_file())]
)


def _original(path: Path) -> pydicom.Dataset | None:
    try:
        return pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001
        return None


def test_there_are_enough_real_files():
    assert len(REAL_FILES) > 280, f"missing: {missing_sources()}"


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_file_is_deidentified_or_rejected_with_a_reason(path, real_outcome):
    outcome = real_outcome(path)
    if isinstance(outcome, Rejected):
        assert outcome.reason and outcome.detail
        return
    output, processed = outcome
    out = pydicom.dcmread(output)
    original = _original(path)
    assert out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.SOPInstanceUID != original.SOPInstanceUID
    assert out.StudyInstanceUID != original.get("StudyInstanceUID")
    texts = [str(e.value) for e in out.iterall() if e.VR not in ("OB", "OW", "OF", "OD", "OL", "UN", "SQ")]
    for keyword in ("PatientName", "PatientID", "ReferringPhysicianName", "AccessionNumber", "OperatorsName"):
        before = str(original.get(keyword, "") or "").strip()
        if len(before) > 3:
            assert not any(before in text for text in texts), keyword
    if original.get("InstitutionName"):
        assert out.get("InstitutionName") != original.InstitutionName
    source = pydicom.dcmread(path, force=True)
    if "PixelData" in source and not (processed.pixels and processed.pixels.redacted):
        # Untouched pixels stay byte for byte (trailing padding beyond the declared frames aside).
        assert source.PixelData.startswith(out.PixelData)
        assert len(source.PixelData) - len(out.PixelData) < len(out.PixelData) // int(out.get("NumberOfFrames") or 1)
