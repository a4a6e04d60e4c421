"""De-identify a folder tree (or a list of files) into a research folder, with a JSON-lines report.

Each input ends as exactly one report line, in input order, whatever happens to it:

- `deidentified`, with its output path;
- `duplicate`: its output is byte for byte the output of an earlier input with the same SOP
  Instance UID (a re-export, a copy), which `same_as` names; nothing more is written;
- `rejected`, with a reason code and a PHI-free detail. `sop_instance_uid_conflict` is one: an
  earlier input (`same_as`) has the same SOP Instance UID and different content. The first in
  input order is kept, and the later ones are reported, never silently written over it (the cloud
  workflow applies the same rule in arrival order).

Inputs are never modified or moved. Each one is processed in a worker process with a time and a
memory limit, so an input that crashes a decoder, hangs, or asks for all the memory becomes a
rejected line (`crashed`, `timeout`, `too_large`) and the run goes on. Workers write outputs into a
staging folder inside the research folder; the parent alone moves them into place, in input order,
which is what makes "first in input order" hold however many workers there are. Workers' stderr
goes nowhere: a library that prints what it was decoding cannot print it to the terminal.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import multiprocessing
import os
import resource
import shutil
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from .dicomraw.read import text_value
from .engine import Engine
from .intake import Rejected
from .pseudonym import Pseudonymizer
from .rejection import Unavailable
from .rules import RuleSet
from .storage import LocalStore

STAGING = ".deidflow-staging"  # inside the research folder: the same file system, so moves are atomic
KEY_MARK = ".deidflow-key"  # in the research folder: the fingerprint of the key its outputs were made with
# A worker holds its next input while it works on one: it never waits for the parent between
# inputs (a round trip between processes costs about half a millisecond on a small VM, as much as
# the engine's own work on a tenth of a CT slice). One input waits at most behind one other.
QUEUED_PER_WORKER = 2


@dataclass(frozen=True)
class ReportLine:
    input: str
    status: str  # "deidentified" | "duplicate" | "rejected"
    output: str | None = None
    reason: str | None = None
    detail: str | None = None
    same_as: str | None = None  # duplicate or conflict: the earlier input with this SOP Instance UID
    warnings: tuple[str, ...] | None = None  # published on the rules' explicit say-so (pixels_unscanned)


@dataclass
class BatchSummary:
    lines: list[ReportLine] = field(default_factory=list)

    @property
    def deidentified(self) -> int:
        return sum(1 for line in self.lines if line.status == "deidentified")

    @property
    def duplicates(self) -> int:
        return sum(1 for line in self.lines if line.status == "duplicate")

    @property
    def warned(self) -> Counter[str]:
        return Counter(warning for line in self.lines for warning in line.warnings or ())

    @property
    def rejected(self) -> int:
        return sum(1 for line in self.lines if line.status == "rejected")

    @property
    def reasons(self) -> Counter[str]:
        return Counter(line.reason for line in self.lines if line.reason)


@dataclass(frozen=True)
class Limits:
    """What one input may take. `memory_bytes` is the memory (heap and anonymous mappings) a worker
    may add to what it holds after start-up (models loaded on first use count against it)."""

    timeout_s: float = 600.0
    memory_bytes: int | None = 6 * 1024**3


def iter_inputs(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files as given, folders walked in sorted order (stable reports, reproducible runs)."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for folder, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield Path(folder) / name
        elif path.exists():
            yield path
        else:
            raise FileNotFoundError(f"input not found: {path}")


def run_batch(
    inputs: Iterable[str | os.PathLike[str]],
    destination: str | os.PathLike[str],
    rules: RuleSet,
    key: bytes,
    *,
    jobs: int = 1,
    report_path: str | os.PathLike[str] | None = None,
    on_result: Callable[[ReportLine], None] | None = None,
    limits: Limits = Limits(),
    engine: Callable[[RuleSet, bytes], Engine] = Engine,
) -> BatchSummary:
    """De-identify `inputs` into `destination`; one report line per input, in input order.

    `engine` builds each worker's engine from the rules and the key (a module-level callable: it
    travels to the worker by reference).
    """
    files = [str(p) for p in iter_inputs(inputs)]
    claim_destination(Path(destination), Pseudonymizer(key).fingerprint)
    store = LocalStore(destination)
    staging = Path(destination) / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    first: FirstSeen = {}
    seen = _Consistency()
    report = open(report_path, "w", encoding="utf-8") if report_path else None  # noqa: SIM115
    try:
        with _Workers(max(1, jobs), engine, rules, key, staging, limits) as workers:
            for path, outcome in zip(files, workers.results(files), strict=True):
                line = _settle(path, outcome, store, first)
                line = seen.check(line, outcome)
                summary.lines.append(line)
                if report:
                    report.write(json.dumps({k: v for k, v in asdict(line).items() if v is not None}) + "\n")
                    report.flush()
                if on_result:
                    on_result(line)
    finally:
        if report:
            report.close()
        shutil.rmtree(staging, ignore_errors=True)
    return summary


FirstSeen = dict[str, tuple[str, str]]  # SOP Instance UID -> (input, output path)


class DestinationInUse(Exception):
    """The research folder holds what another key made, or what deidflow did not: outputs of two
    keys in one folder would hold two pseudonyms for one patient, and nobody could tell which."""


def claim_destination(destination: Path, fingerprint: str) -> None:
    """An empty (or new) research folder becomes this key's; one already this key's is reused (a
    rerun replaces outputs with the same bytes); any other is refused, and left as it is."""
    mark = destination / KEY_MARK
    if mark.is_file():
        if mark.read_text(encoding="ascii").strip() != fingerprint:
            raise DestinationInUse(f"{destination} holds outputs made with another key: use that key, or a new folder")
        return
    if destination.is_dir() and any(entry.name != STAGING for entry in destination.iterdir()):
        raise DestinationInUse(f"{destination} is not empty and holds no deidflow outputs: choose a new folder")
    destination.mkdir(parents=True, exist_ok=True)
    mark.write_text(fingerprint + "\n", encoding="ascii")


class _Consistency:
    """What the published outputs say together that no one of them does: a study holding two
    patients, a UID naming two things (a study and a series, a series and an instance). Both are
    how inputs from two sources sharing UIDs look; each earns a warning on the line that shows it,
    naming the earlier input in `same_as`. (The UIDs are pseudonyms of the originals, one for one,
    so a collision here is a collision in the input.)"""

    def __init__(self) -> None:
        self.patient_of_study: dict[str, tuple[str, str]] = {}  # study UID -> (patient pseudonym, input)
        self.role_of_uid: dict[str, tuple[str, str]] = {}  # UID -> (study | series | instance, input)

    def check(self, line: ReportLine, outcome: dict[str, Any]) -> ReportLine:
        if line.status != "deidentified":
            return line
        warnings, earlier = list(line.warnings or ()), None
        study, patient = outcome["study_uid"], outcome["patient"]
        known = self.patient_of_study.setdefault(study, (patient, line.input))
        if known[0] != patient:
            warnings.append("study_with_two_patients")
            earlier = known[1]
        for role, uid in (("study", study), ("series", outcome["series_uid"]), ("instance", outcome["sop_uid"])):
            named = self.role_of_uid.setdefault(uid, (role, line.input))
            if named[0] != role:
                warnings.append(f"uid_is_{named[0]}_and_{role}")  # e.g. uid_is_series_and_instance
                earlier = earlier or named[1]
        if not warnings:
            return line
        return replace(line, warnings=tuple(dict.fromkeys(warnings)), same_as=line.same_as or earlier)


def _settle(path: str, outcome: dict[str, Any], store: LocalStore, first: FirstSeen) -> ReportLine:
    """One input's report line; its staged output goes into place, or away (a duplicate, a conflict)."""
    if outcome["status"] == "rejected":
        return ReportLine(path, "rejected", reason=outcome["reason"], detail=outcome["detail"])
    staged, sop_uid = outcome["staged"], outcome["sop_uid"]
    earlier = first.get(sop_uid)
    if earlier is None:
        output = store.commit(staged, outcome["key"])
        first[sop_uid] = (path, output)
        return ReportLine(path, "deidentified", output=output, warnings=outcome["warnings"] or None)
    earlier_input, earlier_output = earlier
    identical = filecmp.cmp(staged, earlier_output, shallow=False)  # only on a collision: no digest per file
    os.unlink(staged)
    if identical:
        return ReportLine(path, "duplicate", output=earlier_output, same_as=earlier_input)
    return ReportLine(
        path,
        "rejected",
        reason="sop_instance_uid_conflict",
        detail="an earlier input has the same SOP Instance UID and other content; the first is kept",
        same_as=earlier_input,
    )


# --- the workers ---------------------------------------------------------------------------------


class _Workers:
    """Worker processes, each given one input at a time and watched for its limits."""

    def __init__(
        self,
        count: int,
        engine: Callable[[RuleSet, bytes], Engine],
        rules: RuleSet,
        key: bytes,
        staging: Path,
        limits: Limits,
    ):
        # fork is quick and shares what the parent has loaded, but is only safe while the parent
        # runs a single thread (a test process may have an ONNX runtime's threads going).
        method = "fork" if threading.active_count() == 1 else "forkserver"
        self.context: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            self.context.set_forkserver_preload(["deidflow.batch"])
        self.args = (engine, rules, key, str(staging), limits.memory_bytes)
        self.limits = limits
        self.count = count
        self.workers: list[_Worker] = []

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            worker.stop()

    def _start(self) -> _Worker:
        parent, child = self.context.Pipe()
        process = self.context.Process(target=_serve, args=(child, *self.args), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def results(self, files: list[str]) -> Iterator[dict[str, Any]]:
        """Each file's outcome, in input order, however the workers finish."""
        if files and not self.workers:
            self.workers = [self._start() for _ in range(min(self.count, len(files)))]
        waiting = deque(enumerate(files))
        done: dict[int, dict[str, Any]] = {}
        next_index = 0
        while next_index < len(files):
            for worker in self.workers:
                while waiting and len(worker.tasks) < QUEUED_PER_WORKER:
                    task = waiting.popleft()
                    if not worker.give(*task):
                        if worker.tasks[0] != task:
                            waiting.appendleft(worker.tasks.pop())  # never reached it: someone else's
                        break  # it is gone: found below, by its sentinel
            busy = [w for w in self.workers if w.tasks]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=0.5)
            now = time.monotonic()
            for i, worker in enumerate(self.workers):
                if not worker.tasks:
                    continue
                if worker.conn in ready:
                    try:
                        done[worker.tasks[0][0]] = worker.conn.recv()
                        worker.tasks.popleft()
                        worker.started = now  # it goes straight on with the next queued input
                        continue
                    except (EOFError, OSError):
                        pass  # it died while answering: a crash
                index = worker.tasks[0][0]
                if worker.conn in ready or worker.process.sentinel in ready:
                    done[index] = _crashed(worker)
                elif now - worker.started > self.limits.timeout_s:
                    worker.kill()
                    done[index] = _rejected("timeout", f"processing took longer than {self.limits.timeout_s:g} s")
                else:
                    continue
                worker.tasks.popleft()
                waiting.extendleft(reversed(worker.tasks))  # queued behind it, never started
                worker.stop()
                self.workers[i] = self._start()
            while next_index in done:
                yield done.pop(next_index)
                next_index += 1


class _Worker:
    def __init__(self, process: Any, conn: Connection):
        self.process = process
        self.conn = conn
        self.tasks: deque[tuple[int, str]] = deque()  # given, in the order it works through them
        self.started = 0.0  # when it began the first of them

    def give(self, index: int, path: str) -> bool:
        if not self.tasks:
            self.started = time.monotonic()
        self.tasks.append((index, path))
        try:
            self.conn.send(path)
        except (BrokenPipeError, OSError):
            return False
        return True

    def kill(self) -> None:
        self.process.kill()

    def stop(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _crashed(worker: _Worker) -> dict[str, Any]:
    worker.process.join(timeout=5)
    code = worker.process.exitcode
    how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    return _rejected("crashed", f"the worker process ended while processing this input ({how})")


def _rejected(reason: str, detail: str) -> dict[str, Any]:
    return {"status": "rejected", "reason": reason, "detail": detail}


def _serve(
    conn: Connection,
    make_engine: Callable[[RuleSet, bytes], Engine],
    rules: RuleSet,
    key: bytes,
    staging: str,
    memory_bytes: int | None,
) -> None:
    """A worker: one input in, one outcome out, until told to stop."""
    _quiet()
    engine = make_engine(rules, key)
    if memory_bytes is not None:
        _limit_memory(memory_bytes)
    folder = Path(staging) / str(os.getpid())
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    while True:
        path = conn.recv()
        if path is None:
            return
        count += 1
        conn.send(_process_one(engine, path, folder / f"{count}.dcm"))


def _process_one(engine: Engine, path: str, staged: Path) -> dict[str, Any]:
    try:
        # Streamed: Pixel Data goes from the input to the output by the kernel, never through here.
        processed = engine.process(path, stream=True)
        with open(staged, "wb") as fh:
            processed.write_to(fh)
    except Rejected as rejected:
        return _rejected(rejected.reason, rejected.detail)
    except Unavailable as exc:  # nothing wrong with the file: run it again later
        return _rejected("service_unavailable", f"{exc}; run it again later")
    except OSError as exc:
        return _rejected("unreadable", f"could not read the file ({exc.strerror or type(exc).__name__})")
    except MemoryError:
        return _rejected("too_large", "it does not fit in the worker's memory limit")
    except Exception as exc:  # noqa: BLE001 - one input's failure is its line, never the run's
        return _rejected("internal_error", f"processing failed ({type(exc).__name__})")
    return {
        "status": "ok",
        "staged": str(staged),
        "key": processed.key,
        "sop_uid": processed.sop_uid,
        "study_uid": processed.study_uid,
        "series_uid": processed.series_uid,
        "patient": text_value(processed.result.dataset, "PatientID", "LO"),  # the pseudonym
        "warnings": processed.warnings,
    }


def _quiet() -> None:
    """Nothing a worker's libraries print reaches the terminal (decoders describe what they read)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    warnings.simplefilter("ignore")


def _limit_memory(extra_bytes: int) -> None:
    """Cap the worker's data (heap and anonymous mappings, RLIMIT_DATA) at what it holds now plus
    `extra_bytes`: an allocation past it fails (MemoryError in Python) instead of taking the
    machine's memory. Mapped files do not count (a 10 GiB input is mapped for its framing walk,
    and its pages are the page cache's), nor does what is streamed from input to output."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            size_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmData:"))
    except (OSError, StopIteration):
        return  # not Linux: no data-size figure to start from, so no cap
    limit = size_kb * 1024 + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
