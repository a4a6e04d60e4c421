"""A research folder read as the research API reads the cloud: its index and catalog dumps, and its
objects. For laptop commands (`deidflow profiles explain`) and tests; the API itself runs on moto."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..research.header import InstanceRecord
from ..storage import CATALOG_DUMP, INDEX_DUMP


class FolderIndex:
    """`ResearchIndex` over a folder that `deidflow local run` filled (studies/ and the dumps)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        dump = self.root / INDEX_DUMP
        if not dump.exists():
            raise FileNotFoundError(f"{dump} is missing: `deidflow local run` writes it beside the research folder")
        self._by_study: dict[str, list[InstanceRecord]] = {}
        for item in json_lines(dump):
            sidecar = item.get("dicom_json_sidecar")
            text = (self.root / sidecar).read_text("utf-8") if sidecar and "dicom_json" not in item else None
            record = InstanceRecord.from_item(item, text)
            self._by_study.setdefault(record.study_instance_uid, []).append(record)
        for records in self._by_study.values():
            records.sort(key=lambda r: r.sort_key)
        self._catalog = [i for i in json_lines(self.root / CATALOG_DUMP) if i.get("item") == "study"]
        self._catalog.sort(key=lambda i: (str(i.get("study_date", "")), str(i["study_instance_uid"])), reverse=True)

    def studies(self) -> Iterable[tuple[str, Mapping[str, Any]]]:
        return [(str(i["study_instance_uid"]), json.loads(i.get("summary") or "{}")) for i in self._catalog]

    def study_instances(self, study_uid: str) -> list[InstanceRecord]:
        return list(self._by_study.get(study_uid, []))

    def series_instances(self, study_uid: str, series_uid: str) -> list[InstanceRecord]:
        return [r for r in self._by_study.get(study_uid, []) if r.series_instance_uid == series_uid]

    def instance(self, sop_uid: str) -> InstanceRecord | None:
        found = (r for records in self._by_study.values() for r in records if r.sop_instance_uid == sop_uid)
        return next(found, None)


class FolderStore:
    """`ObjectStore` over the folder's files (no presigned links: a laptop reads its own disk)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        out = []
        with open(self.root / key, "rb") as fh:
            for offset, length in ranges:
                fh.seek(offset)
                out.append(fh.read(length))
        return out

    def presigned_url(self, key: str, seconds: int) -> str:
        return (self.root / key).resolve().as_uri()


def json_lines(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines dump; none when it does not exist."""
    if not path.exists():
        return
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
