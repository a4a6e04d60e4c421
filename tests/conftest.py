"""Shared fixtures: a fixed key, engines, and a synthetic PHI-laden corpus written once per run."""

from __future__ import annotations

from pathlib import Path

import pytest
from deidflow.process import Engine
from deidflow.rules import load_rules, load_rules_text
from deidflow.synthetic import Corpus, make_corpus, write_corpus

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
    from deidflow.cloud.local import LocalWorkflow

    with LocalWorkflow(TEST_KEY, project=REPO, text_detector="local") as wf:
        yield wf


def dicom_bytes(ds) -> bytes:
    import io

    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def burned_in_ultrasound(seed: int = 7):
    """An ultrasound image, BurnedInAnnotation YES, with a patient's name and MRN drawn into the pixels.

    Returns (dataset, the words drawn, the instance's planted header values).
    """
    import numpy as np
    from deidflow.synthetic import make_instance, make_patient, make_study, new_uid
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    patient = make_patient(40 + seed)
    study = make_study(patient, 0, rng)
    instance = make_instance(study, new_uid(), 1, 1, rng, rows=240, columns=320)
    ds = instance.dataset
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.Modality = "US"
    ds.BurnedInAnnotation = "YES"
    image = Image.fromarray((rng.random((240, 320, 3)) * 60).astype("uint8"))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=22)
    words = ("QUILLFEATHER", "MRN 88123467")
    draw.text((10, 8), words[0], fill=(255, 255, 255), font=font)
    draw.text((10, 200), words[1], fill=(255, 255, 0), font=font)
    pixels = np.asarray(image)
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    return ds, words, patient.planted
