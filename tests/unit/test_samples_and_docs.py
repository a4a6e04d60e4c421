"""What a new user meets first: the bundled samples and the documentation's links."""

from __future__ import annotations

import importlib.util
import re
from collections import defaultdict
from pathlib import Path

import pydicom

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "drop"


def _make_samples():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_samples", REPO / "samples" / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_samples


def test_the_samples_regenerate_byte_for_byte(tmp_path):
    count = _make_samples()(tmp_path / "drop")
    committed = {p.relative_to(SAMPLES): p.read_bytes() for p in SAMPLES.rglob("*.dcm")}
    regenerated = {p.relative_to(tmp_path / "drop"): p.read_bytes() for p in (tmp_path / "drop").rglob("*.dcm")}
    assert len(committed) == count
    assert regenerated == committed, "samples/make_samples.py no longer makes the committed files"


def test_the_samples_hold_consistent_studies():
    """One study, one patient; a UID names one thing (a study, a series or an instance)."""
    patients: dict[str, set[str]] = defaultdict(set)
    roles: dict[str, set[str]] = defaultdict(set)
    for path in SAMPLES.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        patients[ds.StudyInstanceUID].add(ds.PatientID)
        for role in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            roles[str(ds[role].value)].add(role)
    assert all(len(ids) == 1 for ids in patients.values()), patients
    assert all(len(named) == 1 for named in roles.values()), {u: r for u, r in roles.items() if len(r) > 1}


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_the_readme_and_docs_links_resolve_inside_the_repository():
    documents = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        for target in LINK.findall(document.read_text(encoding="utf-8")):
            if re.match(r"^[a-z]+:", target):
                continue  # a web address
            resolved = (document.parent / target).resolve()
            if not resolved.is_relative_to(REPO) or not resolved.exists():
                broken.append(f"{document.relative_to(REPO)}: {target}")
    assert not broken, broken
