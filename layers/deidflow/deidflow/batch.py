"""De-identify a folder tree (or a list of files) into a research folder, with a JSON-lines report.

Each input ends as one report line: `deidentified` with its output path, or `rejected` with a
reason code and a PHI-free detail. Inputs are never modified or moved.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .intake import Rejected
from .process import Engine
from .rules import RuleSet
from .storage import LocalStore


@dataclass(frozen=True)
class ReportLine:
    input: str
    status: str  # "deidentified" | "rejected"
    output: str | None = None
    reason: str | None = None
    detail: str | None = None


@dataclass
class BatchSummary:
    lines: list[ReportLine] = field(default_factory=list)

    @property
    def deidentified(self) -> int:
        return sum(1 for line in self.lines if line.status == "deidentified")

    @property
    def rejected(self) -> int:
        return sum(1 for line in self.lines if line.status == "rejected")

    @property
    def reasons(self) -> Counter[str]:
        return Counter(line.reason for line in self.lines if line.reason)


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


_worker: tuple[Engine, LocalStore] | None = None


def _init_worker(rules: RuleSet, key: bytes, destination: str) -> None:
    global _worker
    _worker = (Engine(rules, key), LocalStore(destination))


def _process_one(path: str) -> ReportLine:
    assert _worker is not None, "worker not initialised"
    engine, store = _worker
    try:
        processed = engine.process(path)
    except Rejected as rejected:
        return ReportLine(path, "rejected", reason=rejected.reason, detail=rejected.detail)
    except OSError as exc:
        return ReportLine(path, "rejected", reason="unreadable", detail=f"could not read the file ({exc.strerror})")
    output = store.put(processed.key, processed.parts)
    return ReportLine(path, "deidentified", output=output)


def run_batch(
    inputs: Iterable[str | os.PathLike[str]],
    destination: str | os.PathLike[str],
    rules: RuleSet,
    key: bytes,
    *,
    jobs: int = 1,
    report_path: str | os.PathLike[str] | None = None,
    on_result: Callable[[ReportLine], None] | None = None,
) -> BatchSummary:
    files = [str(p) for p in iter_inputs(inputs)]
    Path(destination).mkdir(parents=True, exist_ok=True)
    summary = BatchSummary()
    report = open(report_path, "w", encoding="utf-8") if report_path else None  # noqa: SIM115
    try:
        for line in _results(files, destination, rules, key, jobs):
            summary.lines.append(line)
            if report:
                report.write(json.dumps({k: v for k, v in asdict(line).items() if v is not None}) + "\n")
            if on_result:
                on_result(line)
    finally:
        if report:
            report.close()
    return summary


def _results(
    files: list[str], destination: str | os.PathLike[str], rules: RuleSet, key: bytes, jobs: int
) -> Iterator[ReportLine]:
    if jobs <= 1 or len(files) < 2:
        _init_worker(rules, key, str(destination))
        yield from map(_process_one, files)
        return
    chunk = max(1, min(32, len(files) // (jobs * 4)))
    with ProcessPoolExecutor(
        max_workers=jobs, initializer=_init_worker, initargs=(rules, key, str(destination))
    ) as pool:
        yield from pool.map(_process_one, files, chunksize=chunk)
