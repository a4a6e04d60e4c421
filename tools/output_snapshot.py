#!/usr/bin/env python
"""A fingerprint of what the engine does, to show a refactoring changed nothing.

    python tools/output_snapshot.py write SNAPSHOT.json
    python tools/output_snapshot.py compare SNAPSHOT.json

Runs the engine in this process over every real test file (tests/realfiles.py), the synthetic
PHI-laden corpus and 50 benchmark CT slices, under three rule sets (the defaults; every profile
option except retain_uids, clean_graphics and modified dates on; the research-pacs configuration in tests/data),
and records per input the SHA-256 of the output bytes, or the rejection reason. `compare` prints
every input whose outcome differs and exits 1 if any does.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from deidflow.engine import Engine  # noqa: E402
from deidflow.intake import Rejected  # noqa: E402
from deidflow.rules import load_rules, load_rules_text  # noqa: E402
from deidflow.testing.synthetic import make_corpus, make_patient, make_series, make_study, write_corpus  # noqa: E402

from tests.realfiles import real_files  # noqa: E402

KEY = bytes(range(32))
RESEARCH_PACS = REPO / "tests" / "data" / "research_pacs_config.yaml"
ALL_OPTIONS = """deidflow_rules: 1
profile:
  options:
    retain_safe_private: true
    retain_device_identity: true
    retain_institution_identity: true
    retain_patient_characteristics: true
    retain_longitudinal_full_dates: true
    retain_longitudinal_modified_dates: false
    clean_descriptors: true
    clean_structured_content: true
"""


def rule_sets() -> dict[str, Engine]:
    return {
        "default": Engine(load_rules(), KEY),
        "all-options": Engine(load_rules_text(ALL_OPTIONS, "all-options.yaml"), KEY),
        # Loaded under a fixed name: a rule's origin (file, line) keys its shifts and pseudonyms.
        "research-pacs": Engine(load_rules_text(RESEARCH_PACS.read_text(), RESEARCH_PACS.name), KEY),
    }


def inputs(scratch: Path) -> dict[str, Path]:
    found = {f"real:{_where(path)}": path for path in real_files()}
    corpus = write_corpus(make_corpus(n_patients=2, studies_per_patient=2, images_per_series=2), scratch / "corpus")
    found |= {f"corpus:{path.relative_to(scratch)}": path for path in corpus.files.values()}
    bench = scratch / "bench"  # as benchmarks/bench_deid.py makes them
    bench.mkdir()
    rng = np.random.default_rng(0)
    study = make_study(make_patient(0), 0, rng)
    for n, instance in enumerate(make_series(study, rng, 50, rows=512, columns=512)):
        path = bench / f"img{n:03d}.dcm"
        instance.dataset.save_as(path, enforce_file_format=True)
        found[f"bench:{path.name}"] = path
    return found


def _where(path: Path) -> str:
    """A real file's name that does not depend on where this checkout or its virtualenv is."""
    text = str(path)
    for marker in ("site-packages/", ".realfiles/debian/"):
        if marker in text:
            return text.split(marker, 1)[1]
    return text.lstrip("/")


def snapshot() -> dict[str, str]:
    outcome: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as scratch:
        files = inputs(Path(scratch))
        for name, engine in rule_sets().items():
            for label, path in sorted(files.items()):
                try:
                    digest = hashlib.sha256(engine.process(path).data).hexdigest()
                except Rejected as rejected:
                    digest = f"rejected:{rejected.reason}"
                outcome[f"{name} {label}"] = digest
    return outcome


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("write", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    now = snapshot()
    target = Path(argv[1])
    if argv[0] == "write":
        target.write_text(json.dumps(now, indent=1, sort_keys=True))
        print(f"{len(now)} outcomes written to {target}")
        return 0
    before = json.loads(target.read_text())
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for k in changed:
        print(f"{k}: {before.get(k)} -> {now.get(k)}")
    print(f"{len(now)} outcomes, {len(changed)} changed")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
