#!/usr/bin/env python
"""Header de-identification throughput: deidflow against the pydicom floor and dicognito.

    python benchmarks/bench_deid.py [--count 1000] [--repeat 3] [--data-dir DIR] [--profile N]

Generates `--count` synthetic CT instances (512x512, 16-bit, full PHI-laden header with sequences,
private blocks and an overlay: deidflow.testing.synthetic) once, untimed, then times on the same files, in
this one process (deidflow's one worker process apart), one input at a time:

  (a) floor      pydicom dcmread + dcmwrite, no change: what any pydicom-based tool must pay
  (b) deidflow   run_batch(jobs=1) with the default rules and a fixed key: the `deidflow deid` path,
                 one worker process doing the work while this one moves its outputs into place
  (c) dicognito  Anonymizer().anonymize(ds) + save_as, as its own command line does (if installed)

and then, whole process, as a user runs them from a shell on the same folder (start-up included):

  (d) cp -r      copying the files: what the disk and the page cache cost
  (e) gdcmanon   GDCM's PS3.15 E.1 Basic profile de-identifier (C++; Debian libgdcm-tools), with a
                 throw-away certificate made by openssl (it encrypts the originals, as E.1.1 asks)
  (f) deidflow   `deidflow deid SRC DST --jobs 1`
  (g) floor      a `python -c` running (a) over the folder

Each method is warmed up once on a few files, then run `--repeat` times over all files (methods
interleaved, the order rotating from one round to the next); the best run counts. Targets: deidflow
at least 0.7x the floor's files/s, faster than dicognito, and whole process at least as fast as
gdcmanon (one core each: gdcmanon is single-threaded, and --jobs 1 is one worker). Always exits 0
unless something crashes: it is a benchmark, not a test.

Every timed run starts from the same machine state, set up untimed: the previous run's outputs
deleted, dirty pages written back (`os.sync()`), then `--settle` seconds idle. Dirty pages are not
what made the figures vary (560 MB stays far below the background writeback threshold, and nothing
is written back during a run), but the idle matters on virtual machines whose balloon device reports
free pages to the host (virtio-balloon free page reporting, as on Firecracker): about two seconds
after memory is freed the host takes it back, and page cache written into it afterwards costs a host
page fault per page (a bare loop writing 1,000 files of 560 KB: 0.4 s right after deleting the
previous 1,000, 0.9-1.1 s a second or more later). Without the pause, a run starting right after
another deleted its outputs got part of that discount, depending on how long it ran and on timing;
with it, every method writes into the same kind of memory.

`--profile N` skips the benchmark and prints a cProfile of what a worker does per file (the engine
and the write) over the first N files instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import deidflow
import numpy as np
import pydicom
from deidflow.batch import run_batch
from deidflow.engine import Engine
from deidflow.rules import load_rules
from deidflow.storage import LocalStore
from deidflow.testing.synthetic import make_patient, make_series, make_study
from pydicom import config as pydicom_config

KEY = bytes(range(32))  # fixed, so every run and every method sees the same pseudonyms
ROWS = COLUMNS = 512
STUDIES_PER_PATIENT = 2
IMAGES_PER_SERIES = 25  # 50 images per patient: 20 patients for 1,000 files
DATA_VERSION = 1  # bump when the generated data changes, to invalidate caches
WARMUP_FILES = 20
FLOOR_TARGET = 0.7

Runner = Callable[[list[Path], Path], int]


# --------------------------------------------------------------------------- data


def _generate(folder: Path, count: int) -> None:
    """Write `count` CT instances, one series per study, streaming (never the whole corpus in memory)."""
    rng = np.random.default_rng(20240611)
    written = 0
    patient_index = 0
    while written < count:
        patient = make_patient(patient_index)
        for s_index in range(STUDIES_PER_PATIENT):
            if written >= count:
                break
            study = make_study(patient, s_index, rng)
            images = min(IMAGES_PER_SERIES, count - written)
            for n, inst in enumerate(make_series(study, rng, images, rows=ROWS, columns=COLUMNS), start=1):
                path = folder / f"patient{patient_index:03d}" / f"study{s_index}" / f"img{n:03d}.dcm"
                path.parent.mkdir(parents=True, exist_ok=True)
                inst.dataset.save_as(path, enforce_file_format=True)
                written += 1
                study.instances.clear()
        patient_index += 1


def prepare_data(data_dir: Path, count: int) -> tuple[Path, list[Path]]:
    """The input folder and its files, generated once and reused while the manifest matches."""
    root = data_dir / f"ct{ROWS}x{COLUMNS}-n{count}"
    files_dir = root / "files"
    manifest = root / "manifest.json"
    wanted = {"version": DATA_VERSION, "count": count, "rows": ROWS, "columns": COLUMNS}
    if manifest.exists() and json.loads(manifest.read_text()) == wanted:
        files = sorted(files_dir.rglob("*.dcm"))
        if len(files) == count:
            print(f"using cached data: {files_dir}")
            return files_dir, files
    shutil.rmtree(root, ignore_errors=True)
    files_dir.mkdir(parents=True)
    print(f"generating {count} CT instances ({ROWS}x{COLUMNS}, 16-bit) in {files_dir} ...", flush=True)
    started = time.perf_counter()
    _generate(files_dir, count)
    manifest.write_text(json.dumps(wanted))
    print(f"  generated in {time.perf_counter() - started:.1f} s (not timed)")
    return files_dir, sorted(files_dir.rglob("*.dcm"))


# --------------------------------------------------------------------------- methods


def run_floor(files: list[Path], out: Path) -> int:
    for n, path in enumerate(files):
        ds = pydicom.dcmread(path)
        pydicom.dcmwrite(out / f"{n:06d}.dcm", ds)
    return len(files)


def make_deidflow_runner(input_dir: Path, all_files: list[Path]) -> Runner:
    rules = load_rules()  # once, as the CLI does before its run

    def run_deidflow(files: list[Path], out: Path) -> int:
        # The whole input folder, as `deidflow deid SRC DST --jobs 1` passes it, with its report file;
        # the warm-up passes its few files as a list.
        source: list[str | Path] = [input_dir] if len(files) == len(all_files) else [str(f) for f in files]
        summary = run_batch(source, out / "research", rules, KEY, jobs=1, report_path=out / "research.report.jsonl")
        if summary.rejected:
            reasons = ", ".join(f"{r}: {c}" for r, c in sorted(summary.reasons.items()))
            print(f"  warning: deidflow rejected {summary.rejected} of {len(summary.lines)} files ({reasons})")
        return len(summary.lines)

    return run_deidflow


def make_dicognito_runner() -> tuple[Runner | None, str]:
    try:
        import dicognito
        from dicognito.anonymizer import Anonymizer
    except ImportError as exc:
        return None, f"not importable ({exc})"

    def run_dicognito(files: list[Path], out: Path) -> int:
        anonymizer = Anonymizer(seed="deidflow-bench")  # one per run, reused across files as documented
        for path in files:
            ds = pydicom.dcmread(path)
            anonymizer.anonymize(ds)
            # As dicognito's command line saves (SaveToSOPInstanceUID): named by the new SOP Instance UID.
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
        return len(files)

    return run_dicognito, getattr(dicognito, "__version__", "?")


def whole_process_commands(
    input_dir: Path, scratch: Path
) -> tuple[list[tuple[str, Callable[[Path], list[str]]]], list[str]]:
    """(name, argv for an output folder) of each whole-process method here, and notes on the missing."""
    notes: list[str] = []
    commands: list[tuple[str, Callable[[Path], list[str]]]] = [
        ("(d) cp -r", lambda out: ["cp", "-r", str(input_dir), str(out)])
    ]
    certificate = scratch / "gdcmanon-cert.pem"
    if shutil.which("gdcmanon") and shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=bench",
             "-keyout", str(scratch / "gdcmanon-key.pem"), "-out", str(certificate)],
            check=True, capture_output=True,
        )  # fmt: skip
        commands.append(
            (
                "(e) gdcmanon -e (Basic)",
                lambda out: [
                    "gdcmanon",
                    "-c",
                    str(certificate),
                    "-e",
                    "-r",
                    "--continue",
                    "-i",
                    str(input_dir),
                    "-o",
                    str(out),
                ],
            )
        )
    else:
        notes.append("(e) gdcmanon skipped: not installed (Debian: apt-get install libgdcm-tools openssl)")
    key_file = scratch / "bench.key"
    key_file.write_text(KEY.hex())
    deidflow_cli = shutil.which("deidflow", path=str(Path(sys.executable).parent)) or "deidflow"
    commands.append(
        (
            "(f) deidflow deid --jobs 1",
            lambda out: [
                deidflow_cli,
                "deid",
                str(input_dir),
                str(out),
                "--jobs",
                "1",
                "--quiet",
                "--key-file",
                str(key_file),
            ],
        )
    )
    floor_script = (
        "import sys, pathlib, pydicom\n"
        "out = pathlib.Path(sys.argv[2]); out.mkdir()\n"
        "for n, path in enumerate(sorted(pathlib.Path(sys.argv[1]).rglob('*.dcm'))):\n"
        "    pydicom.dcmwrite(out / f'{n:06d}.dcm', pydicom.dcmread(path))\n"
    )
    commands.append(
        ("(g) floor: python -c read+write", lambda out: [sys.executable, "-c", floor_script, str(input_dir), str(out)])
    )
    return commands, notes


def time_command(argv: Callable[[Path], list[str]], scratch: Path, settle: float = 0.0) -> float:
    """One whole-process run into a fresh output folder, from the same machine state as time_once."""
    out = scratch / "out-cmd"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(Path(f"{out}.report.jsonl"), ignore_errors=True)
    os.sync()
    if settle:
        time.sleep(settle)
    started = time.perf_counter()
    subprocess.run(argv(out), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


# --------------------------------------------------------------------------- timing


def time_once(runner: Runner, files: list[Path], scratch: Path, settle: float = 0.0) -> float:
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    gc.collect()
    # The same starting state for every method (see the module docstring): nothing dirty left to
    # write back, and freed memory given back to the host as it will be during a long run.
    os.sync()
    if settle:
        time.sleep(settle)
    started = time.perf_counter()
    done = runner(files, out)
    elapsed = time.perf_counter() - started
    if done != len(files):
        raise RuntimeError(f"processed {done} of {len(files)} files")
    shutil.rmtree(out, ignore_errors=True)
    return elapsed


def profile_deidflow(files: list[Path], scratch: Path, top: int = 30) -> None:
    """run_batch works in a worker process, out of the profiler's sight: profile what each worker
    does per file, the engine and the write, in this process."""
    engine = Engine(load_rules(), KEY)
    store = LocalStore(scratch / "research")
    subset = [str(f) for f in files]
    for path in subset[:WARMUP_FILES]:
        engine.process(path, stream=True)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for path in subset:
        processed = engine.process(path, stream=True)  # as run_batch's workers do
        store.put(processed.key, processed.parts, processed.source)
    profiler.disable()
    wall = time.perf_counter() - started
    print(f"cProfile of Engine.process + write over {len(subset)} files: {wall:.2f} s under the profiler\n")
    for order in ("cumulative", "tottime"):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(top)
        print(text.getvalue())


def warn_if_busy(when: str) -> None:
    """Other work on the machine skews the figures (this one is shared and has few cores): say so."""
    cpus = os.cpu_count() or 1
    load = os.getloadavg()[0]
    if load > max(1.0, cpus - 1) + 0.5:
        print(f"  warning: 1-min load average {load:.1f} on {cpus} CPUs {when} the runs: other work is running")


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="CT instances to generate and process (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method; the best counts (default 3)")
    parser.add_argument("--data-dir", type=Path, help="cache the generated files here (default: a temp dir)")
    parser.add_argument("--profile", type=int, metavar="N", default=0, help="only profile deidflow over N files")
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds idle (after deleting outputs and os.sync) before each timed run (default 3)",
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.repeat < 1:
        parser.error("--count and --repeat must be at least 1")
    if args.settle < 0:
        parser.error("--settle must not be negative")

    with tempfile.TemporaryDirectory(prefix="bench-deid-") as tmp:
        scratch = Path(tmp)
        data_dir = args.data_dir or scratch / "data"
        count = args.profile or args.count
        input_dir, files = prepare_data(data_dir, count)
        if args.profile:
            profile_deidflow(files, scratch)
            return 0

        total_bytes = 0
        for path in files:  # read every input once: the page cache is equally warm for all methods
            total_bytes += len(path.read_bytes())

        methods: list[tuple[str, Runner]] = [
            ("(a) floor: pydicom read+write", run_floor),
            ("(b) deidflow run_batch jobs=1", make_deidflow_runner(input_dir, files)),
        ]
        dicognito_runner, dicognito_note = make_dicognito_runner()
        if dicognito_runner:
            methods.append((f"(c) dicognito {dicognito_note}", dicognito_runner))

        settings = pydicom_config.settings
        modes = {pydicom_config.IGNORE: "IGNORE", pydicom_config.WARN: "WARN", pydicom_config.RAISE: "RAISE"}
        print(
            f"files: {len(files)} CT {ROWS}x{COLUMNS} 16-bit, {total_bytes / len(files) / 1024:.0f} KiB each, "
            f"{total_bytes / 2**20:.0f} MiB in all"
        )
        print(
            f"python {platform.python_version()}, pydicom {pydicom.__version__}, deidflow {deidflow.__version__}; "
            f"pydicom validation read={modes.get(settings.reading_validation_mode)} "
            f"write={modes.get(settings.writing_validation_mode)} (deidflow's setting; same for all methods)"
        )
        print(
            f"single process; warm-up on {min(WARMUP_FILES, len(files))} files; best of {args.repeat} runs, "
            f"method order rotating; before each: outputs deleted, os.sync(), {args.settle:g} s idle"
        )
        print(f"load average: {_loadavg()}")
        warn_if_busy("before")
        print()

        for _name, runner in methods:
            time_once(runner, files[:WARMUP_FILES], scratch)
        times: dict[str, list[float]] = {name: [] for name, _ in methods}
        for r in range(args.repeat):
            shift = r % len(methods)  # each method in turn runs first, so none always follows the same one
            for name, runner in methods[shift:] + methods[:shift]:
                times[name].append(time_once(runner, files, scratch, args.settle))
                print(f"  run {r + 1}/{args.repeat}  {name:<32} {times[name][-1]:7.2f} s", flush=True)

        warn_if_busy("after")
        print(f"load average: {_loadavg()}")
        rate = {name: len(files) / min(t) for name, t in times.items()}
        floor_name, deid_name = methods[0][0], methods[1][0]
        print()
        print(f"{'method':<32} {'best s':>8} {'median s':>9} {'files/s':>9} {'MiB/s':>7} {'vs floor':>9}")
        for name, t in times.items():
            print(
                f"{name:<32} {min(t):8.2f} {statistics.median(t):9.2f} {rate[name]:9.1f} "
                f"{total_bytes / 2**20 / min(t):7.1f} {rate[name] / rate[floor_name]:8.2f}x"
            )
        if not dicognito_runner:
            print(f"{'(c) dicognito':<32} skipped: {dicognito_note}")

        print("\nwhole process, from a shell (start-up included; best of the same runs):")
        commands, notes = whole_process_commands(input_dir, scratch)
        for _name, argv in commands:
            time_command(argv, scratch)  # warm-up: the binaries and the page cache
        command_times: dict[str, list[float]] = {name: [] for name, _ in commands}
        for r in range(args.repeat):
            shift = r % len(commands)
            for name, argv in commands[shift:] + commands[:shift]:
                command_times[name].append(time_command(argv, scratch, args.settle))
                print(f"  run {r + 1}/{args.repeat}  {name:<32} {command_times[name][-1]:7.2f} s", flush=True)
        cli_name = "(f) deidflow deid --jobs 1"
        print(f"\n{'command':<32} {'best s':>8} {'files/s':>9} {'deidflow vs it':>15}")
        for name, t in command_times.items():
            print(f"{name:<32} {min(t):8.2f} {len(files) / min(t):9.1f} {min(t) / min(command_times[cli_name]):14.2f}x")
        for note in notes:
            print(note)
        gdcm_name = "(e) gdcmanon -e (Basic)"

        floor_ratio = rate[deid_name] / rate[floor_name]
        verdicts = [floor_ratio >= FLOOR_TARGET]
        line = f"deidflow/floor = {floor_ratio:.2f}x (target >= {FLOOR_TARGET:.2f}x)"
        if dicognito_runner:
            dicognito_ratio = rate[deid_name] / rate[methods[2][0]]
            verdicts.append(dicognito_ratio > 1.0)
            line += f";  deidflow/dicognito = {dicognito_ratio:.2f}x (target > 1.00x)"
        else:
            line += ";  deidflow/dicognito = n/a (not checked)"
        labels = ["floor target"] + (["dicognito target"] if dicognito_runner else [])
        if gdcm_name in command_times:
            gdcm_ratio = min(command_times[gdcm_name]) / min(command_times[cli_name])
            verdicts.append(gdcm_ratio >= 1.0)
            labels.append("gdcmanon target")
            line += f";  deidflow/gdcmanon (whole process) = {gdcm_ratio:.2f}x (target >= 1.00x)"
        print()
        print(line)
        print(
            ("PASS" if all(verdicts) else "FAIL")
            + ": "
            + ", ".join(f"{label} {'met' if ok else 'missed'}" for label, ok in zip(labels, verdicts, strict=True))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
