"""Streaming: large binary values go from the input to the output without entering memory, and the
output is byte for byte what the in-memory path writes.

What each test would catch: a span copied from the wrong offset or with the wrong length (every
real file, the marked blocks of the large file); a value left in the file that the pass had to
read, check or change (the large text and the odd-length word values); memory that grows with the
file (the resident-memory limit); bytes taken from a file replaced after it was read; a file
system without copy_file_range.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from deidflow.engine import STREAM_VALUES_ABOVE, Engine, PixelScanRequired
from deidflow.intake import Rejected
from deidflow.parts import SourceChanged, SourceSpan, has_spans, write_parts
from deidflow.testing.synthetic import make_instance, make_patient, make_study, write_large_multiframe

from tests.conftest import engine_with
from tests.realfiles import real_files
from tests.unit.test_options_and_rules import BASE

REPO = Path(__file__).resolve().parents[2]


def _outcome(engine: Engine, path: Path, *, stream: bool) -> tuple[str, bytes]:
    try:
        processed = engine.process(path, scan_pixels=False, stream=stream)
    except Rejected as rejected:
        return f"rejected {rejected.reason}: {rejected.detail}", b""
    except PixelScanRequired:
        return "scan", b""
    return "ok", processed.data


def test_streamed_output_is_the_in_memory_output_on_every_real_file(default_engine):
    files = real_files()
    streamed_any = 0
    for path in files:
        expected = _outcome(default_engine, path, stream=False)
        got = _outcome(default_engine, path, stream=True)
        assert got == expected, f"{path.name}: the streamed output differs"
        if expected[0] == "ok" and os.path.getsize(path) > 2 * STREAM_VALUES_ABOVE:
            streamed_any += 1
    assert streamed_any >= 20, "the real files must include many with values long enough to stream"


def _ct(tmp_path: Path, name: str = "ct.dcm", **changes: object) -> tuple[Path, pydicom.Dataset]:
    rng = __import__("numpy").random.default_rng(5)
    ds = make_instance(
        make_study(make_patient(3), 0, rng), "1.2.826.0.1.3680043.10.1379.77", 1, 1, rng, rows=256, columns=256
    ).dataset
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path, ds


def test_a_streamed_ct_names_its_pixel_data_as_a_span_of_the_input(default_engine, tmp_path):
    path, _ = _ct(tmp_path)
    processed = default_engine.process(path, stream=True)
    spans = [part for part in processed.parts if isinstance(part, SourceSpan)]
    assert len(spans) == 1 and spans[0].length == 256 * 256 * 2
    with open(path, "rb") as fh:
        fh.seek(spans[0].offset)
        assert fh.read(16) == pydicom.dcmread(path).PixelData[:16]
    assert processed.data == default_engine.process(path).data
    assert not has_spans(default_engine.process(path).parts), "without stream=True nothing is left in the file"


def test_long_values_the_pass_must_read_are_read_and_judged_as_before(default_engine, tmp_path):
    # A long text the rules keep is read and checked (a control character rejects it); a long
    # private OB is removed; a long text the profile removes goes without being read.
    keeping = engine_with(
        BASE
        + "transformations:\n  - scope: {labels: ALL}\n    keep_tags: [{tags: MultienergyAcquisitionDescription}]\n"
    )
    bad_text, _ = _ct(tmp_path, "bad.dcm", MultienergyAcquisitionDescription="x" * 50 + "\x01" + "y" * 100_000)
    good_text, _ = _ct(tmp_path, "good.dcm", MultienergyAcquisitionDescription="KEPT" * 30_000)
    private, ds = _ct(tmp_path, "private.dcm")
    ds.private_block(0x0013, "BIG VENDOR", create=True).add_new(0x10, "OB", b"\x01" * 200_002)
    ds.save_as(private, enforce_file_format=True)
    rejected = _outcome(keeping, bad_text, stream=True)
    assert rejected[0].startswith("rejected invalid_value"), rejected
    assert rejected == _outcome(keeping, bad_text, stream=False)
    kept = _outcome(keeping, good_text, stream=True)
    assert kept[0] == "ok" and b"KEPT" * 30_000 in kept[1]
    assert kept == _outcome(keeping, good_text, stream=False)
    # A kept text longer than 64 KiB is written as UN (pydicom can hold no more under its VR): its
    # value is still the tag's text, judged on its bytes (the fuzzer's "huge" case).
    as_un, _ = _ct(tmp_path, "un.dcm", Manufacturer="PLANTED-NAME " * 6000)
    rejected = _outcome(default_engine, as_un, stream=True)
    assert rejected[0].startswith("rejected"), rejected
    assert rejected == _outcome(default_engine, as_un, stream=False)
    removed = _outcome(default_engine, private, stream=True)
    assert removed[0] == "ok" and b"\x01" * 1000 not in removed[1]
    assert removed == _outcome(default_engine, private, stream=False)


def test_bytes_of_a_file_replaced_after_it_was_read_are_never_used(default_engine, tmp_path):
    path, _ = _ct(tmp_path)
    processed = default_engine.process(path, stream=True)
    replacement = tmp_path / "other.dcm"
    replacement.write_bytes(path.read_bytes())
    os.replace(replacement, path)  # as a sync tool puts a new copy in place
    with open(tmp_path / "out.dcm", "wb") as out, pytest.raises(SourceChanged):
        processed.write_to(out)


def test_without_copy_file_range_the_span_is_copied_by_reading(default_engine, tmp_path, monkeypatch):
    path, _ = _ct(tmp_path)
    processed = default_engine.process(path, stream=True)

    def refuse(*_args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    with open(tmp_path / "out.dcm", "wb") as out:
        write_parts(out, processed.parts, processed.source)
    assert (tmp_path / "out.dcm").read_bytes() == default_engine.process(path).data


def _peak_rss_of_deid(source: Path, destination: Path) -> tuple[int, dict]:
    """`deidflow deid SOURCE DEST --jobs 1` in a fresh process: the peak resident memory (KiB) of it
    and its worker, and its report line."""
    # Its own peak from VmHWM, not getrusage: ru_maxrss survives exec, so a process started from a
    # large one (pytest, late in the suite) reports its parent's size.
    script = (
        "import resource, sys\n"
        "from deidflow.cli import main\n"
        "code = main(['deid', sys.argv[1], sys.argv[2], '--jobs', '1', '--key-file', sys.argv[3]])\n"
        "own = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), code)\n"
    )
    key_file = destination.parent / "key"
    key_file.write_text(bytes(range(32)).hex())
    env = {**os.environ, "PYTHONPATH": str(REPO / "layers" / "deidflow")}
    done = subprocess.run(
        [sys.executable, "-c", script, str(source), str(destination), str(key_file)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    peak, code = done.stdout.split()[-2:]
    assert code == "0", done.stderr
    report = [json.loads(line) for line in Path(f"{destination}.report.jsonl").read_text().splitlines()]
    return int(peak), report[0]


@pytest.mark.slow
def test_a_1_gib_multiframe_is_deidentified_in_256_mib_and_matches_the_in_memory_path(tmp_path):
    source = tmp_path / "in" / "mr.dcm"
    source.parent.mkdir()
    write_large_multiframe(source, 1024**3)
    peak_kib, line = _peak_rss_of_deid(source.parent, tmp_path / "out")
    assert line["status"] == "deidentified", line
    assert peak_kib <= 256 * 1024, f"peak resident memory {peak_kib / 1024:.0f} MiB"
    output = Path(line["output"])
    streamed = hashlib.sha256()
    with open(output, "rb") as fh:
        head = fh.read(1 << 20)
        streamed.update(head)
        while chunk := fh.read(1 << 24):
            streamed.update(chunk)
    header = head[: head.index(b"\xe0\x7f\x10\x00OW")]  # what comes before Pixel Data
    planted = [*make_patient(11).planted, "Quellmore", "Vandermolen"]  # write_large_multiframe's patient
    assert not [value for value in planted if value.encode() in header]
    # The in-memory path (the one every differential test guards), on the same input and key.
    from deidflow.rules import load_rules

    processed = Engine(load_rules(), bytes(range(32))).process(source)
    in_memory = hashlib.sha256()
    for part in processed.parts:
        in_memory.update(part)  # type: ignore[arg-type]  # bytes: nothing streamed
    assert streamed.hexdigest() == in_memory.hexdigest()
