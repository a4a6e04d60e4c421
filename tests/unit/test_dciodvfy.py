"""The standard's own validator, dciodvfy (Debian's dicom3tools), on real files before and after
de-identification: the output adds no error the input did not have.

The errors are compared as dciodvfy words them, with values (which de-identification changes)
left out. `make` unpacks dicom3tools into .realfiles/debian where it is not installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
from deidflow.intake import Rejected

from ..realfiles import DEBIAN_ROOTS, real_files, source_of

DCIODVFY = shutil.which("dciodvfy") or next(
    (str(root / "usr/bin/dciodvfy") for root in DEBIAN_ROOTS if (root / "usr/bin/dciodvfy").is_file()), None
)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy not found: apt-get install dicom3tools (or run make)"),
]


@cache
def errors(path: Path) -> frozenset[str]:
    run = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, errors="replace", timeout=120)
    found = set()
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("Error"):
            message = re.sub(r"<[^>]*>", "<>", line.split(" - ", 1)[-1])  # element values
            message = re.sub(r"(?<=UID )\S+", "<uid>", message)  # UIDs quoted bare
            found.add(re.sub(r"\s+", " ", message).strip())
    return frozenset(found)


def test_deidentified_real_files_add_no_dciodvfy_error(real_outcome):
    validated = 0
    added: dict[str, list[str]] = {}
    for path in real_files():
        outcome = real_outcome(path)
        if isinstance(outcome, Rejected):
            continue  # nothing published to validate
        output, _ = outcome
        validated += 1
        new = errors(output) - errors(path)
        if new:
            added[f"{source_of(path)}/{path.name}"] = sorted(new)
    assert validated > 200
    assert not added, "\n".join(f"{name}: {problems}" for name, problems in added.items())


def test_dciodvfy_is_really_judging():
    """A defect it must see: an instance with a Type 2 attribute removed."""
    import pydicom

    source = next(p for p in real_files("pydicom") if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(source)
    del ds.StudyDate
    broken = Path(pytest.importorskip("tempfile").mkdtemp()) / "broken.dcm"
    ds.save_as(broken)
    assert "Missing attribute Type 2 Required Element=<> Module=<>" in errors(broken) - errors(source)
