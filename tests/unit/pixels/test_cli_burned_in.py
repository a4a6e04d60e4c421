"""`deidflow deid` end to end on the burned-in ultrasounds of deid-data: the words are gone."""

from __future__ import annotations

import json
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


def _ultrasound_run(tmp_path: Path, rules: str) -> tuple[int, list[dict], Path]:
    drop, out = tmp_path / "drop", tmp_path / "out"
    drop.mkdir()
    shutil.copy(ULTRASOUNDS / "GREYSCALE_IMAGE.dcm", drop / "us.dcm")
    (tmp_path / "key").write_text("ab" * 32)
    (tmp_path / "rules.yaml").write_text(rules)
    report = tmp_path / "report.jsonl"
    options = ["--key-file", str(tmp_path / "key"), "--rules", str(tmp_path / "rules.yaml"), "--report", str(report)]
    code = main(["deid", str(drop), str(out), *options, "--jobs", "1", "--quiet"])
    return code, [json.loads(line) for line in report.read_text().splitlines()], out


def test_pixels_that_must_be_scanned_are_not_published_unscanned(tmp_path):
    """detector none on an ultrasound flagged BurnedInAnnotation YES: nobody looked at its pixels."""
    code, lines, out = _ultrasound_run(tmp_path, "deidflow_rules: 1\npixels:\n  detector: none\n")
    assert code == 3
    assert [(line["status"], line["reason"]) for line in lines] == [("rejected", "pixels_unscanned")]
    assert "allow_unscanned" in lines[0]["detail"]
    assert not list(out.rglob("*.dcm"))


def test_publishing_unscanned_pixels_is_an_opt_in_the_report_and_exit_code_tell(tmp_path):
    rules = "deidflow_rules: 1\npixels:\n  detector: none\n  allow_unscanned: true\n"
    code, lines, out = _ultrasound_run(tmp_path, rules)
    assert code == 4
    assert [(line["status"], line["warnings"]) for line in lines] == [("deidentified", ["pixels_unscanned"])]
    (published,) = out.rglob("*.dcm")
    ds = pydicom.dcmread(published)
    assert ds.BurnedInAnnotation == "YES", "the output still says what its pixels may hold"
    assert "113101" not in {i.CodeValue for i in ds.DeidentificationMethodCodeSequence}  # no Clean Pixel Data
