"""Real DICOM files that other projects ship: data nobody here wrote, for the tests to run on.

PyPI packages (requirements-dev.txt, requirements-realfiles.txt) and Debian packages (fetched with
`apt-get download` and unpacked into .realfiles/debian by `make`, no root needed; or installed).
A source that is not there is simply absent from the list; `missing_sources()` names them.
Zipped and gzipped files are left out (the tests that want them read them themselves).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEBIAN_ROOTS = [Path(os.environ.get("DEIDFLOW_REALFILES_DEBIAN", REPO / ".realfiles" / "debian")), Path("/")]
LARGEST = 50 * 1024**2  # the odd 100 MB cine would only slow the suite down
NOT_DICOM = {".py", ".pyc", ".txt", ".md", ".rst", ".json", ".dump", ".icc", ".nii", ".gz", ".zip", ".lut", ".pdf"}


def _module_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (heudiconv's imports are heavy)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _in_module(name: str, *folders: str) -> Callable[[], list[Path]]:
    def folders_of() -> list[Path]:
        root = _module_dir(name)
        return [root / folder for folder in folders] if root else []

    return folders_of


def _in_debian(*folders: str) -> Callable[[], list[Path]]:
    def folders_of() -> list[Path]:
        return [root / folder for folder in folders for root in DEBIAN_ROOTS if (root / folder).is_dir()][:1]

    return folders_of


# name -> (where its files are, which of them, how to get it). pydicom's test folders are taken
# whole: their non-DICOM files are inputs to reject too.
SOURCES: dict[str, tuple[Callable[[], list[Path]], str, str]] = {
    "pydicom": (_in_module("pydicom", "data/test_files", "data/charset_files"), "*", "pip install pydicom"),
    "deid-data": (_in_module("deid_data", "data"), "*.dcm", "pip install deid-data"),
    "pydicom-data": (_in_module("data_store", "data"), "*.dcm", "pip install pydicom-data"),
    "nibabel": (_in_module("nibabel", "tests/data", "nicom/tests/data"), "*.dcm", "pip install nibabel"),
    "pynetdicom": (_in_module("pynetdicom", "tests/dicom_files"), "*.dcm", "pip install pynetdicom"),
    "heudiconv": (_in_module("heudiconv", "tests/data"), "*.dcm", "pip install --no-deps heudiconv"),
    "octave-dicom": (_in_debian("usr/share/octave/packages/dicom-0.5.1/imdata"), "*.dcm", "apt-get download"),
    "dicomscope": (_in_debian("usr/share/dicomscope/reports"), "*.dcm", "apt-get download dicomscope"),
    "dicom3tools": (_in_debian("usr/share/doc/dicom3tools/examples"), "*.dcm", "apt-get download dicom3tools"),
    "dicomnifti": (_in_debian("usr/share/doc/dicomnifti/examples"), "*.dcm", "apt-get download dicomnifti"),
    "libgdcm3.0": (_in_debian("usr/share/doc/libgdcm3.0/examples"), "*.dcm", "apt-get download libgdcm3.0"),
}


@cache
def real_files(*sources: str) -> tuple[Path, ...]:
    """Every file of the given sources (all, by default) that may be DICOM, in a stable order."""
    found: list[Path] = []
    for name in sources or SOURCES:
        folders, pattern, _ = SOURCES[name]
        for folder in folders():
            for path in sorted(folder.rglob(pattern)):
                if path.is_file() and path.suffix.lower() not in NOT_DICOM and 0 < path.stat().st_size <= LARGEST:
                    found.append(path)
    return tuple(found)


def missing_sources() -> list[str]:
    return [f"{name} ({how})" for name, (folders, _, how) in SOURCES.items() if not folders()]


def source_of(path: Path) -> str:
    for name, (folders, _, _) in SOURCES.items():
        if any(folder in path.parents for folder in folders()):
            return name
    return "?"
