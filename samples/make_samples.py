"""Regenerate samples/drop: a small synthetic drop folder (fake PHI only) for `make run` and demos.

.venv/bin/python samples/make_samples.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

from deidflow.synthetic import make_corpus, write_corpus

DROP = Path(__file__).parent / "drop"

if __name__ == "__main__":
    shutil.rmtree(DROP, ignore_errors=True)
    corpus = write_corpus(make_corpus(n_patients=2, studies_per_patient=1, images_per_series=3, seed=2026), DROP)
    print(f"wrote {len(corpus.files)} files to {DROP}")
