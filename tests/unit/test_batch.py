"""`deidflow deid` runs: every input gets one line whatever it does to its worker, and inputs that
share a SOP Instance UID never overwrite each other."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pydicom.data
import pytest
from deidflow.batch import DestinationInUse, Limits, run_batch
from deidflow.cli import main
from deidflow.engine import Engine
from deidflow.rules import RuleSet, load_rules
from deidflow.testing.synthetic import make_corpus

from ..conftest import TEST_KEY

PLANTED_NAME = "Quixfeldt"


class _Faulty(Engine):
    """An engine that misbehaves on inputs whose name says how: the faults a real decoder has."""

    def process(self, source, **kwargs):  # type: ignore[no-untyped-def, override]
        name = Path(source).name
        if name.startswith("crash"):
            os.kill(os.getpid(), signal.SIGSEGV)
        if name.startswith("hang"):
            time.sleep(120)
        if name.startswith("hog"):
            hog = bytearray(8 * 1024**3)  # far past the limit: MemoryError, not a swapping machine
            del hog
        if name.startswith("boom"):
            raise ValueError(f"could not convert {PLANTED_NAME}^Zebulon")  # a message quoting a value
        return super().process(source, **kwargs)


def faulty_engine(rules: RuleSet, key: bytes) -> Engine:
    return _Faulty(rules, key)


def _copy_with_faults(corpus_dir, tmp_path: Path) -> tuple[Path, list[str]]:
    _, source = corpus_dir
    folder = tmp_path / "drop"
    shutil.copytree(source, folder)
    some = sorted(folder.rglob("*.dcm"))[0]
    for name in ("crash.dcm", "hang.dcm", "hog.dcm", "boom.dcm"):
        shutil.copy(some, folder / name)
    files = sorted(str(p) for p in folder.rglob("*") if p.is_file())
    return folder, files


def _report(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_crash_a_hang_a_memory_hog_and_an_exception_each_end_as_one_line(corpus_dir, tmp_path, capfd, jobs):
    folder, files = _copy_with_faults(corpus_dir, tmp_path)
    out = tmp_path / "research"
    report = tmp_path / "report.jsonl"
    summary = run_batch(
        [folder],
        out,
        load_rules(),
        TEST_KEY,
        jobs=jobs,
        report_path=report,
        limits=Limits(timeout_s=3, memory_bytes=1024**3),
        engine=faulty_engine,
    )
    lines = _report(report)
    assert [line["input"] for line in lines] == files, "one line per input, in input order"
    by_name = {Path(line["input"]).name: line for line in lines}
    assert by_name["crash.dcm"]["reason"] == "crashed" and "signal 11" in by_name["crash.dcm"]["detail"]
    assert by_name["hang.dcm"]["reason"] == "timeout"
    assert by_name["hog.dcm"]["reason"] == "too_large"
    assert by_name["boom.dcm"] == {
        "input": by_name["boom.dcm"]["input"],
        "status": "rejected",
        "reason": "internal_error",
        "detail": "processing failed (ValueError)",
    }
    assert summary.deidentified == len(files) - 4
    assert not (out / ".deidflow-staging").exists()
    captured = capfd.readouterr()
    assert PLANTED_NAME not in captured.out + captured.err


def _mr_small_family() -> list[Path]:
    """pydicom's MR_small in several encodings: one SOP Instance UID, different bytes."""
    folder = Path(pydicom.data.__file__).parent / "test_files"
    names = ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"]
    return [folder / name for name in names]


def test_inputs_sharing_a_sop_instance_uid_never_overwrite_each_other(tmp_path):
    family = _mr_small_family()
    drop = tmp_path / "drop"
    drop.mkdir()
    for i, path in enumerate(family):
        shutil.copy(path, drop / f"{i}_{path.name}")
    shutil.copy(family[0], drop / "9_copy_of_MR_small.dcm")  # a byte-identical re-export
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"research{jobs}"
        report = tmp_path / f"report{jobs}.jsonl"
        run_batch([drop], out, load_rules(), TEST_KEY, jobs=jobs, report_path=report)
        outputs = {
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.rglob("*.dcm"))
        }
        lines = [{k: v.replace(str(out), "OUT") for k, v in line.items()} for line in _report(report)]
        runs[jobs] = (lines, outputs)
    lines, outputs = runs[1]
    assert runs[2] == runs[1], "the same outcome whatever the number of workers"
    assert len(outputs) == 1, "one SOP Instance UID, one research file"
    first, *others, copy = lines
    assert first["status"] == "deidentified" and Path(first["input"]).name == "0_MR_small.dcm"
    assert copy["status"] == "duplicate" and copy["same_as"] == first["input"] and copy["output"] == first["output"]
    for line in others:
        assert line["status"] == "rejected" and line["reason"] == "sop_instance_uid_conflict"
        assert line["same_as"] == first["input"]
    written = Path(first["output"].replace("OUT", str(tmp_path / "research1")))
    assert hashlib.sha256(written.read_bytes()).hexdigest() == next(iter(outputs.values()))


def test_the_command_prints_no_header_value_whatever_the_inputs_do(tmp_path):
    """`deidflow deid` as a user runs it, over damaged files whose errors quote their bytes (pydicom's
    messages do: a wrong VR length error prints the value): nothing planted reaches the terminal."""
    import subprocess
    import sys

    from deidflow.testing.mutations import cases, default_seeds

    drop = tmp_path / "drop"
    drop.mkdir()
    fuzz = [case for case in cases(default_seeds(), 150, seed=7) if case.family in {"vr", "swallow", "charset"}]
    planted = {token for case in fuzz for token in case.planted}
    for n, case in enumerate(fuzz):
        (drop / f"{n:03d}.dcm").write_bytes(case.data)
    key = tmp_path / "key"
    key.write_text("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n")
    deidflow = Path(sys.executable).parent / "deidflow"
    run = subprocess.run(
        [str(deidflow), "deid", str(drop), str(tmp_path / "out"), "--key-file", str(key), "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 3, run.stderr[-2000:]
    printed = run.stdout + run.stderr
    assert not [token for token in planted if token in printed or token.lower() in printed.lower()]
    assert len((tmp_path / "out.report.jsonl").read_text().splitlines()) == len(fuzz)


def test_a_study_with_two_patients_and_a_uid_naming_two_things_are_warned(tmp_path):
    """How inputs from two sources sharing UIDs look (the bundled samples once did): published,
    as they are not unsafe, but the report says so on the line that shows it, naming the other."""
    corpus = make_corpus(n_patients=2, studies_per_patient=1, images_per_series=1, with_sr=False)
    first, second = (study.instances[0].dataset for study in corpus.studies)
    second.StudyInstanceUID = first.StudyInstanceUID  # another patient in the same study
    second.SOPInstanceUID = second.file_meta.MediaStorageSOPInstanceUID = first.SeriesInstanceUID
    drop = tmp_path / "drop"
    drop.mkdir()
    first.save_as(drop / "a.dcm", enforce_file_format=True)
    second.save_as(drop / "b.dcm", enforce_file_format=True)
    (tmp_path / "key").write_text(TEST_KEY.hex())
    report = tmp_path / "report.jsonl"
    arguments = ["deid", str(drop), str(tmp_path / "out"), "--key-file", str(tmp_path / "key")]
    assert main([*arguments, "--report", str(report), "--quiet"]) == 4
    a, b = _report(report)
    assert a["status"] == b["status"] == "deidentified" and "warnings" not in a
    assert b["warnings"] == ["study_with_two_patients", "uid_is_series_and_instance"]
    assert b["same_as"] == str(drop / "a.dcm")


def test_a_research_folder_holds_the_outputs_of_one_key_only(tmp_path, corpus_dir):
    """A second key's outputs beside the first's: two pseudonyms for one patient, nobody could say
    which is which. The folder is refused, as is a folder holding anything else; nothing in it is
    touched; the same key reruns into its own folder."""
    _, source = corpus_dir
    one = next(source.rglob("*.dcm"))
    out = tmp_path / "research"
    assert run_batch([one], out, load_rules(), TEST_KEY).deidentified == 1
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert run_batch([one], out, load_rules(), TEST_KEY).deidentified == 1  # a rerun: same key
    (tmp_path / "key").write_text(bytes(range(1, 33)).hex())
    arguments = ["deid", str(one), str(out), "--key-file", str(tmp_path / "key"), "--quiet"]
    assert main(arguments) == 2
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    unrelated = tmp_path / "holiday-photos"
    unrelated.mkdir()
    (unrelated / "beach.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(DestinationInUse, match="not empty"):
        run_batch([one], unrelated, load_rules(), TEST_KEY)
    assert [p.name for p in unrelated.iterdir()] == ["beach.jpg"]
