"""Regenerate samples/drop: a small synthetic drop folder (fake PHI only) for `make run` and demos.

Two patients' CT series with an SR, and an ultrasound with a name and an MRN burned into its pixels
(so a local run shows the redaction path too).

.venv/bin/python samples/make_samples.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
from deidflow.testing.synthetic import make_burned_in_ultrasound, make_corpus, write_corpus

DROP = Path(__file__).parent / "drop"

if __name__ == "__main__":
    shutil.rmtree(DROP, ignore_errors=True)
    corpus = write_corpus(make_corpus(n_patients=2, studies_per_patient=1, images_per_series=3, seed=2026), DROP)
    ultrasound, _, _ = make_burned_in_ultrasound(seed=2026)
    (DROP / "ultrasound").mkdir()
    pydicom.dcmwrite(DROP / "ultrasound" / "echo0000.dcm", ultrasound, enforce_file_format=True)
    print(f"wrote {len(corpus.files) + 1} files to {DROP}")
