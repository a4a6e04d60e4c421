"""Integration tests run real services (a local Orthanc); each skips with a reason when one is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def dist() -> Path:
    """OHIF's prebuilt dist folder (npm's @ohif/app, fetched once into .cache/ohif); skips the test
    when Chromium, the playwright package or npm is missing."""
    from deidflow.local.ohif import NpmMissing, ohif_dist

    from .ohif_browser import CHROMIUM

    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no Chromium at {CHROMIUM}: sudo apt-get install -y chromium")
    pytest.importorskip("playwright", reason="the playwright package (requirements-dev.txt) is not installed")
    cache = Path(os.environ.get("DEIDFLOW_OHIF_CACHE", REPO / ".cache" / "ohif"))
    try:
        return ohif_dist(cache)  # once per machine (about 50 MB from the npm registry), then the cache
    except NpmMissing as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def ohif_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the OHIF tests leave their screenshots: $DEIDFLOW_TEST_ARTIFACTS, else a temporary folder."""
    folder = Path(os.environ.get("DEIDFLOW_TEST_ARTIFACTS") or tmp_path_factory.mktemp("ohif-artifacts"))
    print(f"ohif artifacts: {folder}")
    return folder
