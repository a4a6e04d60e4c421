"""Shared fixtures: a fixed key, engines, and a synthetic PHI-laden corpus written once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
from deidflow.engine import Engine
from deidflow.rules import load_rules, load_rules_text
from deidflow.testing.synthetic import Corpus, make_corpus, write_corpus

TEST_KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture(scope="session")
def key() -> bytes:
    return TEST_KEY


@pytest.fixture(scope="session")
def default_engine() -> Engine:
    return Engine(load_rules(), TEST_KEY)


def engine_with(yaml_text: str, key: bytes = TEST_KEY) -> Engine:
    return Engine(load_rules_text(yaml_text, "test-rules.yaml"), key)


@pytest.fixture(scope="session")
def real_outcome(default_engine, tmp_path_factory):
    """`real_outcome(path)`: a real file de-identified once per session: (output path, the engine's
    result) or the Rejected it raised. Tests of the same files share the work."""
    from functools import cache

    from deidflow.intake import Rejected

    folder = tmp_path_factory.mktemp("real-outputs")

    @cache
    def outcome(path: Path):
        try:
            processed = default_engine.process(path)
        except Rejected as rejected:
            return rejected
        output = folder / f"{len(list(folder.iterdir()))}.dcm"
        output.write_bytes(processed.data)
        return output, processed

    return outcome


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Corpus, Path]:
    """3 patients x 2 studies x (3 CT images referencing each other + 1 SR citing them)."""
    folder = tmp_path_factory.mktemp("corpus")
    corpus = write_corpus(make_corpus(n_patients=3, studies_per_patient=2, images_per_series=3), folder)
    return corpus, folder


# -- the workflow on moto (tests/functions, tests/workflow) ---------------------------------------

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def workflow():
    """A fresh local stack (buckets, queue, tables, secret, state machine) with the real handlers."""
    from deidflow.local.workflow import LocalWorkflow

    with LocalWorkflow(TEST_KEY, project=REPO, text_detector="local") as wf:
        yield wf


def dicom_bytes(ds) -> bytes:
    import io

    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()
