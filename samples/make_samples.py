"""Regenerate samples/drop: a small synthetic drop folder (fake PHI only) for `make run` and demos.

Two patients' CT series with an SR, and an ultrasound with a name and an MRN burned into its pixels
(so a local run shows the redaction path too).

.venv/bin/python samples/make_samples.py [FOLDER]

The files are the same, byte for byte, on every run (a test regenerates them and compares).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pydicom
from deidflow.testing.synthetic import make_burned_in_ultrasound, make_corpus, write_corpus

DROP = Path(__file__).parent / "drop"



def make_samples(folder: Path) -> int:
    """Write the sample drop folder into `folder` (replacing it); return how many files."""
    shutil.rmtree(folder, ignore_errors=True)
    corpus = write_corpus(make_corpus(n_patients=2, studies_per_patient=1, images_per_series=3, seed=2026), folder)
    ultrasound, _, _ = make_burned_in_ultrasound(seed=2026)
    (folder / "ultrasound").mkdir()
    pydicom.dcmwrite(folder / "ultrasound" / "echo0000.dcm", ultrasound, enforce_file_format=True)
    return len(corpus.files) + 1


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DROP
    print(f"wrote {make_samples(target)} files to {target}")
