"""The cloud's streaming path on moto: a large original read as a sparse copy (header and tail by
ranged GETs), written as a multipart upload whose pixel parts S3 copies from the original.

What each test would catch: a part plan whose pieces do not add up to the output, or that breaks
S3's 5 MiB rule (the plan property test); a span copied from the wrong offset, a missed tail, a
header cut short (the byte comparison with the local path); pixels fetched into the function
(the GET byte count); the engine reading the hole (zeros published) instead of falling back.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import boto3
import pytest
from deidflow.cloud import streaming
from deidflow.cloud.objects import ObjectRef
from deidflow.engine import Engine
from deidflow.parts import MIN_PART, CopyPart, SourceSpan, UploadPart, multipart_plan, output_size
from deidflow.rules import load_rules
from deidflow.testing.synthetic import write_large_multiframe
from moto import mock_aws

KEY = bytes(range(32))


def _flatten(plan: list[UploadPart | CopyPart]) -> list[object]:
    pieces: list[object] = []
    for part in plan:
        pieces.extend(part.pieces if isinstance(part, UploadPart) else [part.span])
    return pieces


def _bytes_of(pieces: list[object], source: bytes) -> bytes:
    return b"".join(
        source[p.offset : p.offset + p.length] if isinstance(p, SourceSpan) else p  # type: ignore[misc]
        for p in pieces
    )


def test_the_part_plan_adds_up_and_keeps_every_part_but_the_last_at_the_minimum():
    rng = random.Random(7)
    source = rng.randbytes(4000)
    for _ in range(500):
        parts: list[bytes | SourceSpan] = []
        for _ in range(rng.randint(1, 8)):
            if rng.random() < 0.5:
                parts.append(rng.randbytes(rng.randint(0, 300)))
            else:
                offset = rng.randint(0, 3000)
                parts.append(SourceSpan(offset, rng.randint(1, 4000 - offset)))
        plan = multipart_plan(parts, min_part=100)
        assert _bytes_of(_flatten(plan), source) == _bytes_of(parts, source)
        assert all(part.size >= 100 for part in plan[:-1]), plan
        assert sum(part.size for part in plan) == output_size(parts)


def test_a_long_span_is_copied_and_only_the_minimum_around_it_is_uploaded():
    plan = multipart_plan([b"h" * 3000, SourceSpan(5000, 100 * MIN_PART), b"t" * 10])
    copied = sum(p.size for p in plan if isinstance(p, CopyPart))
    uploaded = sum(p.size for p in plan if isinstance(p, UploadPart))
    assert copied == 100 * MIN_PART - (MIN_PART - 3000)
    assert uploaded == MIN_PART + 10


@pytest.fixture
def s3():
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in ("ingest", "research"):
            client.create_bucket(Bucket=bucket)
            client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        yield client


class _Counting:
    """The client, counting the bytes its GETs bring into the function."""

    def __init__(self, client):
        self.client, self.got = client, 0

    def __getattr__(self, name):
        return getattr(self.client, name)

    def get_object(self, **kwargs):
        answer = self.client.get_object(**kwargs)
        self.got += int(answer["ContentLength"])
        return answer


def _upload_original(s3, path: Path) -> ObjectRef:
    s3.upload_file(str(path), "ingest", "drop/big.dcm")  # multipart above 8 MiB, as a real upload
    head = s3.head_object(Bucket="ingest", Key="drop/big.dcm")
    return ObjectRef("ingest", "drop/big.dcm", head["VersionId"], int(head["ContentLength"]))


def _stream(s3, ref: ObjectRef, engine: Engine) -> bytes:
    with streaming.sparse_copy(s3, ref, ref.size) as copy:
        processed = engine.process(copy.path, scan_pixels=False, stream=True)
        assert streaming.pixels_untouched(processed.parts, copy)
        streaming.upload_streamed(
            s3, ref, copy, processed.parts, bucket="research", key="out.dcm", content_type="application/dicom"
        )
    return getattr(s3, "client", s3).get_object(Bucket="research", Key="out.dcm")["Body"].read()


def test_a_large_original_is_published_with_its_pixels_copied_by_s3(s3, tmp_path):
    local = tmp_path / "mr.dcm"
    write_large_multiframe(local, 48 * 1024**2, marks_every=4 * 1024**2)
    ref = _upload_original(s3, local)
    engine = Engine(load_rules(), KEY)
    counting = _Counting(s3)
    output = _stream(counting, ref, engine)
    assert output == engine.process(local).data, "the streamed output is the local path's, byte for byte"
    assert counting.got <= streaming.HEADER_PREFIX + 2 * MIN_PART, f"{counting.got} bytes fetched"


def test_what_follows_the_pixels_is_fetched_and_framed(s3, tmp_path):
    # Left as zeros in the sparse copy, a tail would frame as damage (and be quarantined).
    local = tmp_path / "mr.dcm"
    write_large_multiframe(local, 24 * 1024**2)
    with open(local, "ab") as fh:  # Data Set Trailing Padding after Pixel Data, as some writers add
        fh.write(b"\xfc\xff\xfc\xffOB\x00\x00" + (16).to_bytes(4, "little") + b"\x00" * 16)
    ref = _upload_original(s3, local)
    engine = Engine(load_rules(), KEY)
    output = _stream(s3, ref, engine)
    assert output == engine.process(local).data


def test_an_engine_that_reads_the_pixels_is_caught_before_anything_is_published(s3, tmp_path, monkeypatch):
    local = tmp_path / "mr.dcm"
    write_large_multiframe(local, 24 * 1024**2)
    ref = _upload_original(s3, local)
    engine = Engine(load_rules(), KEY)
    with streaming.sparse_copy(s3, ref, ref.size) as copy:
        assert copy.hole is not None
        processed = engine.process(copy.path, scan_pixels=False)  # not streamed: the hole is read
        assert not streaming.pixels_untouched(processed.parts, copy)


def test_an_encapsulated_original_streams_by_once_and_only_its_fragment_heads_are_kept(s3, tmp_path):
    from deidflow.testing.synthetic import write_large_encapsulated

    local = tmp_path / "mr-jpeg.dcm"
    write_large_encapsulated(local, 40 * 1024**2)
    ref = _upload_original(s3, local)
    engine = Engine(load_rules(), KEY)
    with streaming.sparse_copy(s3, ref, ref.size) as copy:
        assert copy.hole is not None, "encapsulated Pixel Data is walked, not downloaded"
        on_disk = os.stat(copy.path).st_blocks * 512
        assert on_disk <= 2 * 1024**2, f"{on_disk} bytes of the sparse copy are on disk"
    assert _stream(s3, ref, engine) == engine.process(local).data


def test_a_rejection_the_hole_may_cause_is_tried_again_on_the_whole_object(s3, tmp_path, monkeypatch):
    local = tmp_path / "mr.dcm"
    write_large_multiframe(local, 24 * 1024**2)
    ref = _upload_original(s3, local)
    engine = Engine(load_rules(), KEY)
    real_process = engine.process
    seen: list[bool] = []

    def process(path, **kwargs):
        sparse = os.stat(path).st_blocks * 512 < os.path.getsize(path) // 2
        seen.append(sparse)
        if sparse:
            from deidflow.intake import Rejected

            raise Rejected("transcode_failed", "as if zeros had been transcoded")
        return real_process(path, **kwargs)

    monkeypatch.setattr(engine, "process", process)
    with streaming.processed_original(s3, engine, ref, ref.size, scan_pixels=False) as (processed, copy):
        assert copy.hole is None and processed.data == real_process(local).data
    assert seen == [True, False]
