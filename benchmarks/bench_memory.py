#!/usr/bin/env python
"""Memory and time of one large instance whose pixels are kept: locally and through the cloud path.

    python benchmarks/bench_memory.py [--sizes 100M,1G,4G] [--cloud-sizes 1G,5G] [--in-memory-up-to 1G]

For each size, a multi-frame MR (512x512, full PHI-laden header) with that much Pixel Data is
written as a sparse file (deidflow.testing.synthetic): native 16-bit up to 4 GiB (its 32-bit length
holds no more: "4G" is 4 GiB less a frame), JPEG Baseline fragments of 1 MiB beyond, then:

  local     `deidflow deid SRC DST --jobs 1` in a fresh process: wall time, and the peak resident
            memory of the command and its worker (getrusage, RUSAGE_CHILDREN)
  in-memory the same instance through Engine.process without streaming (what every version before
            this one did), in a fresh process: the peer the streamed figure is measured against;
            only up to --in-memory-up-to, since it holds the whole file
  cloud     the header step's streaming path (deidflow.cloud.streaming: a sparse copy by ranged
            GETs, the engine, a multipart upload whose pixel parts are UploadPartCopy) in a fresh
            process against a moto server in another process (so that moto's own memory, which
            holds what it stores, is not counted): peak resident memory of that process and the
            bytes its GETs fetched, against the target of a 1 GB Lambda

Targets (issue 16): 1 GiB locally in at most 256 MiB resident; 5 GiB through the cloud path in a
1 GB function. The output of the local and cloud paths is compared byte for byte with the
in-memory path's wherever that ran (SHA-256). Exits 0: a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO / "layers" / "deidflow")}
KEY = bytes(range(32))
LOCAL_TARGET_MIB = 256
LAMBDA_MIB = 1024

_LOCAL = """
import resource, sys, time
from deidflow.cli import main
started = time.perf_counter()
code = main(['deid', sys.argv[1], sys.argv[2], '--jobs', '1', '--quiet', '--key-file', sys.argv[3]])
elapsed = time.perf_counter() - started
# VmHWM, not ru_maxrss, for this process: ru_maxrss survives exec (a parent's size would show).
own = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss), elapsed, code)
"""

_IN_MEMORY = """
import hashlib, resource, sys, time
from deidflow.engine import Engine
from deidflow.rules import load_rules
started = time.perf_counter()
processed = Engine(load_rules(), bytes(range(32))).process(sys.argv[1])
digest = hashlib.sha256()
for part in processed.parts:
    digest.update(part)
elapsed = time.perf_counter() - started
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, elapsed, digest.hexdigest())
"""

_CLOUD = """
import hashlib, resource, sys, time
import boto3
from deidflow.cloud import streaming
from deidflow.cloud.objects import ObjectRef
from deidflow.engine import Engine
from deidflow.rules import load_rules
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="bench",
                  aws_secret_access_key="bench", config=Config(read_timeout=1800, retries={"max_attempts": 1}))
head = s3.head_object(Bucket="ingest", Key="big.dcm")
ref = ObjectRef("ingest", "big.dcm", head.get("VersionId"), int(head["ContentLength"]))
engine = Engine(load_rules(), bytes(range(32)))
# moto reads a whole source object into memory for each UploadPartCopy: one at a time, or the
# server (not the function) runs out of memory at 5 GiB.
streaming.COPY_THREADS = 1
fetched = 0
get_object = s3.get_object
def counting_get(**kwargs):
    global fetched
    answer = get_object(**kwargs)
    fetched += int(answer["ContentLength"])
    return answer
s3.get_object = counting_get
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
with streaming.processed_original(s3, engine, ref, ref.size, scan_pixels=False) as (processed, copy):
    assert copy.hole is not None, "downloaded whole"
    streaming.upload_streamed(s3, ref, copy, processed.parts, bucket="research", key="out.dcm",
                              content_type="application/dicom")
elapsed = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
digest = hashlib.sha256()
body = get_object(Bucket="research", Key="out.dcm")["Body"]
while chunk := body.read(1 << 24):
    digest.update(chunk)
print(before, peak, elapsed, fetched, digest.hexdigest())
"""


# moto's UploadPartCopy reads the whole source object to slice one part out of it: gigabytes per
# part in the server (not in the function measured). The server here reads just the part's range.
_MOTO_SERVER = """
import sys
import moto.s3.models as models
from moto.server import main


def upload_part_copy(self, dest_bucket_name, multipart_id, part_id, src_bucket_name, src_key_name,
                     src_version_id, start_byte, end_byte):
    key = self.get_object(src_bucket_name, src_key_name, version_id=src_version_id)
    with key.lock:
        key._value_buffer.seek(start_byte or 0)
        data = key._value_buffer.read(-1 if start_byte is None else end_byte + 1 - start_byte)
    return self.get_bucket(dest_bucket_name).multiparts[multipart_id].set_part(part_id, data)


models.S3Backend.upload_part_copy = upload_part_copy
main(["-p", sys.argv[1]])
"""


def _size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _run(script: str, *args: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, env=ENV)
    if done.returncode:
        raise SystemExit(f"a measured process failed:\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1].split()  # what the script printed last


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100M,1G,4G", help="local sizes of Pixel Data (default 100M,1G,4G)")
    parser.add_argument("--cloud-sizes", default="1G,5G", help="cloud-path sizes (default 1G,5G; '' to skip)")
    parser.add_argument("--in-memory-up-to", default="1G", help="largest size the in-memory peer runs on")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "layers" / "deidflow"))
    from deidflow.testing.synthetic import write_large_encapsulated, write_large_multiframe

    def write_instance(path: Path, size: int) -> str:
        if size < 4 * 1024**3:
            write_large_multiframe(path, size)
            return "native"
        write_large_encapsulated(path, size)
        return "JPEG"

    in_memory_limit = _size(args.in_memory_up_to)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        scratch = Path(tmp)
        key_file = scratch / "key"
        key_file.write_text(KEY.hex())
        print(f"{'size':>6} {'path':<10} {'seconds':>8} {'peak RSS MiB':>13} {'target MiB':>11} {'same bytes':>11}")
        digests: dict[str, str] = {}
        for text in [t for t in args.sizes.split(",") if t]:
            source_dir = scratch / f"in-{text}"
            source_dir.mkdir()
            source = source_dir / "mr.dcm"
            write_large_multiframe(source, _size(text))
            if _size(text) <= in_memory_limit:
                rss, seconds, digest = _run(_IN_MEMORY, str(source))
                digests[text] = digest
                figures = f"{float(seconds):8.2f} {int(rss) / 1024:13.0f}"
                print(f"{text:>6} {'in-memory':<10} {figures} {'-':>11} {'(peer)':>11}")
            out = scratch / f"out-{text}"
            rss, seconds, _code = _run(_LOCAL, str(source_dir), str(out), str(key_file))
            line = json.loads(Path(f"{out}.report.jsonl").read_text().splitlines()[0])
            same = "-"
            if text in digests and line.get("output"):
                same = "yes" if _sha256(Path(line["output"])) == digests[text] else "NO"
            status = "" if line["status"] == "deidentified" else f"  ({line['status']}: {line.get('reason')})"
            figures = f"{float(seconds):8.2f} {int(rss) / 1024:13.0f}"
            print(f"{text:>6} {'local':<10} {figures} {LOCAL_TARGET_MIB:11d} {same:>11}{status}")
            os.unlink(source)
            if line.get("output"):
                os.unlink(line["output"])
        cloud_sizes = [t for t in args.cloud_sizes.split(",") if t]
        if not cloud_sizes:
            return 0
        port = _free_port()
        server = subprocess.Popen(
            [sys.executable, "-c", _MOTO_SERVER, str(port)],
            stdout=subprocess.DEVNULL,
            stderr=open(scratch / "moto.log", "wb"),  # noqa: SIM115 - the server's, while it runs
            env={**ENV, "MOTO_S3_DEFAULT_MAX_KEYS": "1000"},
        )
        try:
            import boto3
            from boto3.s3.transfer import TransferConfig

            endpoint = f"http://127.0.0.1:{port}"
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            from botocore.config import Config

            # moto joins a multipart upload's parts (gigabytes) in one request: no retry of a slow one.
            s3 = boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="b",
                aws_secret_access_key="b",
                config=Config(read_timeout=1800, retries={"max_attempts": 1}),
            )
            for bucket in ("ingest", "research"):
                s3.create_bucket(Bucket=bucket)
                s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            for text in cloud_sizes:
                source = scratch / f"cloud-{text}.dcm"
                kind = write_instance(source, _size(text))
                size = source.stat().st_size
                s3.upload_file(
                    str(source), "ingest", "big.dcm", Config=TransferConfig(multipart_chunksize=256 * 1024**2)
                )
                expected = digests.get(text)
                os.unlink(source)
                before, peak, seconds, fetched, digest = _run(_CLOUD, endpoint)
                same = "-" if expected is None else ("yes" if digest == expected else "NO")
                figures = f"{float(seconds):8.2f} {int(peak) / 1024:13.0f}"
                print(
                    f"{text:>6} {'cloud':<10} {figures} {LAMBDA_MIB:11d} {same:>11}  (fetched"
                    f" {int(fetched) / 1024**2:.1f} MiB of {size / 1024**2:.0f} MiB, {kind};"
                    f" {int(before) / 1024:.0f} MiB at start)"
                )
                s3.delete_object(Bucket="ingest", Key="big.dcm")
        except BaseException:
            print((scratch / "moto.log").read_text(errors="replace")[-3000:])
            raise
        finally:
            server.terminate()
            server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
