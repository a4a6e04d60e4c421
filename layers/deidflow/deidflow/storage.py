"""Where de-identified instances go: one key layout, and the local research folder."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from .parts import Part, SourceFile, write_parts

_UID_SAFE = re.compile(r"^[0-9.]+$")
# Beside a research folder that the local workflow filled: its index and catalog items, one JSON
# object per line, as the Index step wrote them (what `deidflow local api` serves).
INDEX_DUMP = ".deidflow-index.jsonl"
CATALOG_DUMP = ".deidflow-catalog.jsonl"


def research_key(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """studies/<Study>/series/<Series>/instances/<SOP>.dcm, from the new (pseudonymous) UIDs."""
    for uid in (study_uid, series_uid, sop_uid):
        if not _UID_SAFE.match(uid):
            raise ValueError("a UID used in a key must contain only digits and dots")
    return f"studies/{study_uid}/series/{series_uid}/instances/{sop_uid}.dcm"


_RESEARCH_KEY = re.compile(r"^studies/([0-9.]+)/series/([0-9.]+)/instances/[0-9.]+\.dcm$")


def research_place(key: str) -> tuple[str, str] | None:
    """(Study, Series) of a key `research_key` made; None for any other key."""
    match = _RESEARCH_KEY.match(key)
    return (match.group(1), match.group(2)) if match else None


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self._made: set[Path] = set()

    def put(self, key: str, data: bytes | Sequence[Part], source: SourceFile | None = None) -> str:
        """Write `data` (bytes, or parts whose spans are copied from `source`) to `key`."""
        target = self.root / key
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        # Write then rename: a reader never sees half a file, and a rerun replaces it atomically.
        # The temporary name is unique per process, and hidden so a watcher skips it.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                if isinstance(data, bytes):
                    fh.write(data)
                else:
                    write_parts(fh, data, source)  # large parts go straight to the file, unbuffered
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return str(target)

    def commit(self, staged: str | os.PathLike[str], key: str) -> str:
        """Move a file written elsewhere on the same file system to `key`, atomically."""
        target = self.root / key
        if target.parent not in self._made:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._made.add(target.parent)
        os.replace(staged, target)
        return str(target)
