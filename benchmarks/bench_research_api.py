#!/usr/bin/env python
"""The research API against Orthanc's DICOMweb plugin over the same instances, and its cloud cost.

    python benchmarks/bench_research_api.py [--instances 2000] [--requests 60] [--frames 300]

Writes synthetic CT instances (deidflow.testing.synthetic: 128x128 16-bit, the full synthetic
header) into a research folder: one study holding a series of up to 1,000 instances, the rest as
20-instance studies (default 1,200 instances: the moto stand-ins make loading and every DynamoDB
call slow, which keeps the default run near 3 minutes; `--instances 5000` for more). The files are
written as generated (benchmark data, not the workflow's output): what is measured is serving,
not de-identifying. Then, in this one run:

  deidflow   `LocalResearchApi` (the real Lambda handler behind a JWT check, DynamoDB and S3 on moto)
  Orthanc    Debian's Orthanc 1.10 with its DICOMweb plugin, the same files stored by STOW-RS

and times, one client, sequential requests: QIDO study search (`/studies?limit=10`), series
metadata (a 20-instance series), WADO frames (`frames/1` of random instances of the 20-instance
studies, and of the big study's: a frame in a profile's scope reads its own index item only); then the metadata
of the 1,000-instance series (raw and gzipped bytes, time) against Lambda's 6 MB answer limit; then
the cost per million requests, with the arithmetic. Durations are this machine's, with moto
standing in for DynamoDB and S3 (loopback, no network): the Lambda durations are estimates of the
right order, not predictions. Exits 0: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests
from deidflow.cloud.steps import catalog_items
from deidflow.index import index_file, item_size
from deidflow.local.api import LocalResearchApi
from deidflow.local.orthanc import LocalOrthanc, OrthancNotInstalled, _auth_header, find_orthanc, stow_rs
from deidflow.storage import CATALOG_DUMP, INDEX_DUMP
from deidflow.testing.synthetic import make_patient, make_series, make_study

REPO = Path(__file__).resolve().parents[1]
LAMBDA_LIMIT = 6 * 1024 * 1024  # synchronous invocation payload, bytes
LAMBDA_MB = 1024
# us-east-1 list prices (USD); change them here if yours differ.
PRICE = {
    "api_gateway_http_per_million": 1.00,
    "lambda_gb_second_arm64": 0.0000133334,
    "lambda_per_million": 0.20,
    "dynamodb_rru_per_million": 0.125,
    "dynamodb_wru_per_million": 0.625,
    "s3_get_per_thousand": 0.0004,
}
PROFILES = """\
version: 1
profiles:
  everything:
    description: every instance, for the benchmark
    scope: {labels: [ALL]}
    level: study
    actions: [search, view, download]
assignments:
  - users: [bench]
    profiles: [everything]
"""
# What the by_study GSI projects (template.yaml): the keys and these; never dicom_json.
GSI_ATTRIBUTES = {
    "sop_instance_uid", "study_instance_uid", "series_instance_sort", "series_instance_uid", "modality",
    "study_date", "patient_id", "research_key", "sop_class_uid", "series_number", "instance_number",
    "number_of_frames", "rows", "columns", "study_description", "series_description", "body_part_examined",
}  # fmt: skip


def write_instances(folder: Path, total: int, big_series: int, per_study: int = 20) -> dict[str, Any]:
    """The research folder's files; returns the UIDs the timings use."""
    rng = np.random.default_rng(2026)
    studies: list[dict[str, Any]] = []
    remaining = total
    index = 0
    while remaining > 0:
        size = big_series if index == 0 else min(per_study, remaining)
        study = make_study(make_patient(index), 0, rng)
        series_uid = ""
        sops = []
        for instance in make_series(study, rng, size, rows=128, columns=128):
            ds = instance.dataset
            series_uid = str(ds.SeriesInstanceUID)
            sops.append(str(ds.SOPInstanceUID))
            path = folder / "studies" / study.study_uid / "series" / series_uid / "instances" / f"{sops[-1]}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
        studies.append({"study": study.study_uid, "series": series_uid, "sops": sops})
        remaining -= size
        index += 1
    write_dumps(folder)
    return {"studies": studies}


def write_dumps(folder: Path) -> None:
    """The index and catalog dumps a local run leaves beside studies/ (the API loads them with
    batch writes, much faster on moto than indexing each file there)."""
    index, catalog = [], {}
    for path in sorted((folder / "studies").rglob("*.dcm")):
        entry = index_file(path, path.relative_to(folder).as_posix())
        index.append(json.dumps(entry.item, sort_keys=True) + "\n")
        for item in catalog_items(entry):
            catalog[(item["study_instance_uid"], item["item"])] = json.dumps(item, sort_keys=True) + "\n"
    (folder / INDEX_DUMP).write_text("".join(index), "utf-8")
    (folder / CATALOG_DUMP).write_text("".join(catalog.values()), "utf-8")


def timed(get: Callable[[], requests.Response], n: int) -> tuple[list[float], list[requests.Response]]:
    seconds, answers = [], []
    for _ in range(n):
        started = time.perf_counter()
        answer = get()
        seconds.append(time.perf_counter() - started)
        answer.raise_for_status()
        answers.append(answer)
    return seconds, answers


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=1200, help="default: a 1,000-instance series + 10 studies")
    parser.add_argument("--requests", type=int, default=10, help="timed requests per QIDO/metadata row")
    parser.add_argument("--frames", type=int, default=60, help="timed frame requests")
    args = parser.parse_args()
    try:
        installation = find_orthanc()
    except OrthancNotInstalled as exc:
        print(f"no local Orthanc: {exc}")
        return 0
    big = min(1000, max(1, args.instances - 200))  # the rest in 20-instance studies
    with tempfile.TemporaryDirectory(prefix="bench-research-api-") as tmp:
        root = Path(tmp)
        research = root / "research"
        started = time.perf_counter()
        layout = write_instances(research, args.instances, big)
        files = sorted((research / "studies").rglob("*.dcm"))
        took = time.perf_counter() - started
        print(f"{len(files)} instances in {len(layout['studies'])} studies written and indexed in {took:.1f} s")
        (root / "profiles.yaml").write_text(PROFILES, "utf-8")
        (root / "access.yaml").write_text("profiles: profiles.yaml\nusers:\n  - {username: bench}\n", "utf-8")
        started = time.perf_counter()
        with (
            LocalResearchApi(research, root / "access.yaml", project=REPO) as api,
            LocalOrthanc(
                root / "orthanc", root / "drop", installation=installation, delete_after_forward=False
            ) as orthanc,
        ):
            print(f"local API loaded (moto) in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            for at in range(0, len(files), 200):
                stow_rs(orthanc.url, orthanc.credentials, files[at : at + 200], timeout=300)
            print(f"Orthanc loaded (STOW-RS) in {time.perf_counter() - started:.1f} s\n")
            ours = requests.Session()
            ours.headers["Authorization"] = f"Bearer {api.token('bench')}"
            theirs = requests.Session()
            theirs.headers["Authorization"] = _auth_header(orthanc.credentials)
            servers = {"deidflow": (ours, api.dicomweb_url), "Orthanc": (theirs, orthanc.dicomweb_url)}
            report(api, servers, layout, args)
    return 0


def report(api: LocalResearchApi, servers: dict[str, Any], layout: dict[str, Any], args: Any) -> None:
    small = layout["studies"][1:] or layout["studies"]
    rnd = random.Random(7)
    frame_accept = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
    rows: dict[str, dict[str, tuple[list[float], list[requests.Response]]]] = {}
    for name, (session, url) in servers.items():
        # Warm both (first requests load the profiles, open connections, fill Orthanc's caches).
        session.get(f"{url}/studies", params={"limit": "10"}).raise_for_status()
        rows.setdefault("QIDO /studies?limit=10", {})[name] = timed(
            lambda s=session, u=url: s.get(f"{u}/studies", params={"limit": "10"}), args.requests
        )
        picks = [rnd.choice(small) for _ in range(args.requests)]
        it = iter(picks)
        rows.setdefault("series metadata (20 instances)", {})[name] = timed(
            lambda s=session, u=url, i=it: (lambda p: s.get(f"{u}/studies/{p['study']}/series/{p['series']}/metadata"))(
                next(i)
            ),
            args.requests,
        )
        everything = [(st["study"], st["series"], sop) for st in small for sop in st["sops"]]
        frames = iter([rnd.choice(everything) for _ in range(args.frames)])
        rows.setdefault("WADO frames/1 (32 KB)", {})[name] = timed(
            lambda s=session, u=url, i=frames: (
                lambda w: s.get(f"{u}/studies/{w[0]}/series/{w[1]}/instances/{w[2]}/frames/1", headers=frame_accept)
            )(next(i)),
            args.frames,
        )
        # A frame of the big study: decided on its own index item (its profile covers it directly).
        big = layout["studies"][0]
        rows.setdefault(f"WADO frames/1 in a {len(big['sops'])}-inst. study", {})[name] = timed(
            lambda s=session, u=url, b=big: s.get(
                f"{u}/studies/{b['study']}/series/{b['series']}/instances/{rnd.choice(b['sops'])}/frames/1",
                headers=frame_accept,
            ),
            3,
        )
    print(f"{'request':34} {'server':9} {'p50 ms':>8} {'p95 ms':>8} {'per s':>8}   deidflow/Orthanc p50")
    for label, by_server in rows.items():
        base = statistics.median(by_server["Orthanc"][0])
        for name, (seconds, _) in by_server.items():
            ratio = f"{statistics.median(seconds) / base:.2f}x" if name == "deidflow" else ""
            print(
                f"{label:34} {name:9} {statistics.median(seconds) * 1000:8.1f} {pct(seconds, 95) * 1000:8.1f}"
                f" {len(seconds) / sum(seconds):8.1f}   {ratio}"
            )
    # -- the big series --------------------------------------------------------------------------
    big = layout["studies"][0]
    print(f"\nmetadata of one {len(big['sops'])}-instance series:")
    big_seconds = 0.0
    for name, (session, url) in servers.items():
        # As browsers and requests ask: gzip accepted (deidflow answers 413 without it at this size).
        seconds, answers = timed(
            lambda s=session, u=url: s.get(
                f"{u}/studies/{big['study']}/series/{big['series']}/metadata", headers={"Accept-Encoding": "gzip"}
            ),
            3,
        )
        raw = answers[-1].content  # requests has decompressed it
        assert len(json.loads(raw)) == len(big["sops"])
        sent = answers[-1].headers.get("Content-Encoding") == "gzip"
        packed = int(answers[-1].headers["Content-Length"]) if sent else len(gzip.compress(raw, 6))
        if name == "deidflow":
            big_seconds = statistics.median(seconds)
        print(
            f"  {name:9} {statistics.median(seconds) * 1000:7.0f} ms"
            f"  raw {len(raw) / 1e6:6.2f} MB  gzip {packed / 1e6:5.2f} MB"
            + (
                f"  -> through Lambda: gzip+base64 {packed * 4 / 3 / 1e6:.2f} MB of the 6 MB limit"
                f" ({packed * 4 / 3 / LAMBDA_LIMIT:.0%}); raw would be {len(raw) / LAMBDA_LIMIT:.0%}"
                if name == "deidflow"
                else ""
            )
        )
    per_instance = len(raw) / len(big["sops"])
    print(f"  ~{per_instance / 1000:.1f} KB of DICOM JSON per instance uncompressed (this synthetic header)")
    costs(api, rows, layout, big_seconds)


def costs(api: LocalResearchApi, rows: dict[str, Any], layout: dict[str, Any], big_seconds: float) -> None:
    index = [i for page in _scan(api, api.names.index_table) for i in page]
    catalog = [i for page in _scan(api, api.names.catalog_table) for i in page]
    by_study: dict[str, list[dict[str, Any]]] = {}
    for item in index:
        by_study.setdefault(str(item["study_instance_uid"]), []).append(item)
    small_study = next(iter(s for s in by_study.values() if len(s) <= 20))
    catalog_bytes = sum(item_size(i) for i in catalog)
    scan_rru = _rru_stream(catalog_bytes)  # a Scan reads every catalog item, study and series ones

    def study_rru(items: list[dict[str, Any]]) -> float:
        gsi = _rru_stream(sum(item_size({k: v for k, v in i.items() if k in GSI_ATTRIBUTES}) for i in items))
        return gsi + sum(_rru_item(item_size(i)) for i in items)  # Query on by_study + BatchGetItem

    small_rru = study_rru(small_study)
    mean_small = statistics.mean(item_size(i) for i in small_study)
    # limit=10 reads the instances of the first 11 studies in the catalog's order (newest first; one
    # more, to say whether there are more), whatever their size.
    newest = [i for i in catalog if i.get("item") == "study"]
    newest.sort(key=lambda i: (str(i.get("study_date", "")), str(i["study_instance_uid"])), reverse=True)
    qido_rru = scan_rru + sum(study_rru(by_study[str(i["study_instance_uid"])]) for i in newest[:11])
    requests_ = {
        "QIDO /studies?limit=10": (qido_rru, 0),
        "series metadata (20 instances)": (small_rru, 0),  # the whole study's items (one series here)
        "WADO frames/1 (32 KB)": (_rru_item(round(mean_small)), 1),  # GetItem of the instance + one ranged S3 GET
    }
    print("\ncost per million requests (us-east-1 list prices; Lambda arm64 at 1024 MB; eventually consistent reads)")
    print(
        f"  measured sizes: catalog {len(catalog)} items / {catalog_bytes / 1000:.0f} KB"
        f" (one Scan: {scan_rru:.1f} RRU);"
        f" a 20-instance study: {len(small_study)} index items of ~{mean_small / 1000:.1f} KB"
        f" (by_study Query + BatchGetItem: {small_rru:.1f} RRU)"
    )
    print(
        "  assumptions: the Lambda bills the local p50 latency (handler + moto round trips on loopback);"
        " reads as if every request found a cold container (a warm one reuses a study's items for 60 s,"
        " so a viewer's frames after the first cost less);"
        " one audit PutItem of <1 KB (1 WRU) per request; no sidecars (headers under 350 KB);"
        " no API Gateway data transfer or CloudWatch Logs"
    )
    gb = LAMBDA_MB / 1024
    for label, (rru, s3_gets) in requests_.items():
        seconds = statistics.median(rows[label]["deidflow"][0])
        parts = {
            "API Gateway": PRICE["api_gateway_http_per_million"],
            "Lambda requests": PRICE["lambda_per_million"],
            "Lambda duration": seconds * gb * PRICE["lambda_gb_second_arm64"] * 1e6,
            "DynamoDB reads": rru * PRICE["dynamodb_rru_per_million"],
            "S3 GET": s3_gets * PRICE["s3_get_per_thousand"] * 1000,
            "audit write": 1 * PRICE["dynamodb_wru_per_million"],
        }
        print(f"  {label}: ${sum(parts.values()):.2f} per million")
        print(
            f"    = API GW $1.00 + Lambda $0.20 + {seconds * 1000:.0f} ms x {gb:g} GB x $0.0000133334 x 1e6"
            f" = ${parts['Lambda duration']:.2f} + DynamoDB {rru:.1f} RRU x $0.125 = ${parts['DynamoDB reads']:.2f}"
            f" + S3 {s3_gets} GET x $0.0004/1000 x 1e6 = ${parts['S3 GET']:.2f} + audit 1 WRU x $0.625 = $0.62"
        )
    big_items = next(s for s in by_study.values() if len(s) > 20) if any(len(s) > 20 for s in by_study.values()) else []
    if big_items:
        rru = study_rru(big_items)
        dollars = 1 + 0.2 + big_seconds * gb * PRICE["lambda_gb_second_arm64"] * 1e6 + rru * 0.125 + 0.625
        print(
            f"  metadata of the {len(big_items)}-instance series: {rru:.0f} RRU, {big_seconds * 1000:.0f} ms"
            f" -> ${dollars:.2f} per million"
        )


def _scan(api: LocalResearchApi, table: str) -> Any:
    client = api.resource("dynamodb").Table(table)
    kwargs: dict[str, Any] = {}
    while True:
        page = client.scan(**kwargs)
        yield page.get("Items", [])
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _rru_stream(total_bytes: int) -> float:
    """Query/Scan: the bytes read together, in 4 KB units, half for eventually consistent reads."""
    return max(1, math.ceil(total_bytes / 4096)) * 0.5


def _rru_item(size: int) -> float:
    """GetItem/BatchGetItem: each item rounded up to 4 KB, half for eventually consistent reads."""
    return math.ceil(size / 4096) * 0.5


if __name__ == "__main__":
    sys.exit(main())
