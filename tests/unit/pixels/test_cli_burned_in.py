"""`deidflow deid` end to end on the burned-in ultrasounds of deid-data: the words are gone."""

from __future__ import annotations

import shutil
from pathlib import Path

import deid_data
import pydicom
from deidflow.cli import main
from deidflow.pixels import decode_frame, render_for_detection

ULTRASOUNDS = Path(deid_data.__file__).parent / "data" / "ultrasounds"
NAMES = ("GREYSCALE_IMAGE.dcm", "RGB_IMAGE.dcm")


def _words(reader, ds: pydicom.Dataset) -> set[str]:
    frame, photometric = decode_frame(ds, 0)
    return {w for w in reader.tokens(render_for_detection(frame, ds, photometric)) if len(w) >= 3}


def test_deid_command_removes_burned_in_words(reader, tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    for name in NAMES:
        shutil.copy(ULTRASOUNDS / name, drop / name)
    key = tmp_path / "key"
    key.write_text("ab" * 32)
    assert main(["deid", str(drop), str(tmp_path / "out"), "--key-file", str(key), "--jobs", "1", "--quiet"]) == 0
    outputs = sorted((tmp_path / "out").rglob("*.dcm"))
    assert len(outputs) == len(NAMES)
    before = set().union(*(_words(reader, pydicom.dcmread(drop / n)) for n in NAMES))
    assert len(before) >= 3, "the inputs really carry readable burned-in text"
    for path in outputs:
        out = pydicom.dcmread(path)
        assert out.BurnedInAnnotation == "NO"
        assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
        assert not (_words(reader, out) & before)
