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

Each method is warmed up once on a few files, then run `--repeat` times over all files (methods
interleaved, the order rotating from one round to the next); the best run counts. Targets: deidflow
at least 0.7x the floor's files/s, and faster than dicognito. Always exits 0 unless something
crashes: it is a benchmark, not a test.

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
        engine.process(path)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for path in subset:
        processed = engine.process(path)
        store.put(processed.key, processed.parts)
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

        floor_ratio = rate[deid_name] / rate[floor_name]
        verdicts = [floor_ratio >= FLOOR_TARGET]
        line = f"deidflow/floor = {floor_ratio:.2f}x (target >= {FLOOR_TARGET:.2f}x)"
        if dicognito_runner:
            dicognito_ratio = rate[deid_name] / rate[methods[2][0]]
            verdicts.append(dicognito_ratio > 1.0)
            line += f";  deidflow/dicognito = {dicognito_ratio:.2f}x (target > 1.00x)"
        else:
            line += ";  deidflow/dicognito = n/a (not checked)"
        print()
        print(line)
        print(
            ("PASS" if all(verdicts) else "FAIL")
            + ": "
            + ", ".join(
                f"{label} {'met' if ok else 'missed'}"
                for label, ok in zip(("floor target", "dicognito target"), verdicts, strict=False)
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
