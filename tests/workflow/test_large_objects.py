"""Large originals through the whole local workflow: the header step streams them (a sparse copy by
ranged GETs, a multipart upload whose pixel parts S3 copies), IndexHeader indexes a sparse copy of
what was published, and the research object is the local path's output byte for byte.

What each test would catch: the header step or IndexHeader downloading a large object whole (the
bytes its GETs fetched); a streamed output that differs from `deidflow deid`'s (a span from the
wrong place, a header cut short); an index item missing what the research API serves (frames).
"""

from __future__ import annotations

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from deidflow.cloud import streaming
from deidflow.engine import Engine
from deidflow.rules import load_rules
from deidflow.testing.synthetic import write_large_encapsulated, write_large_multiframe

from tests.conftest import TEST_KEY


class _GetMeter:
    """Bytes the handlers' GetObject calls bring in while the pipe runs (an after-call hook on
    boto3's default session, which their clients come from)."""

    def __init__(self) -> None:
        self.fetched = 0

    def __enter__(self) -> _GetMeter:
        boto3.setup_default_session() if boto3.DEFAULT_SESSION is None else None
        boto3.DEFAULT_SESSION.events.register("after-call.s3.GetObject", self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        boto3.DEFAULT_SESSION.events.unregister("after-call.s3.GetObject", self._count)

    def _count(self, parsed, **_kwargs) -> None:
        self.fetched += int(parsed.get("ContentLength") or 0)


def _drop_multipart(workflow, path, name: str) -> None:
    # As a hospital's aws s3 cp does above 8 MiB: a multipart upload (its ETag is not an MD5).
    key = workflow.names.ingest_prefix + name
    workflow.s3.upload_file(
        str(path), workflow.names.ingest_bucket, key, Config=TransferConfig(multipart_chunksize=16 * 1024**2)
    )


@pytest.mark.parametrize("kind", ["native", "encapsulated"])
def test_a_large_original_is_published_by_copy_and_matches_the_local_path(workflow, tmp_path, monkeypatch, kind):
    monkeypatch.setattr(streaming, "STREAM_OBJECTS_ABOVE", 16 * 1024**2)
    monkeypatch.setattr("deidflow.cloud.steps.STREAM_OBJECTS_ABOVE", 16 * 1024**2)
    local = tmp_path / "large.dcm"
    if kind == "native":
        write_large_multiframe(local, 40 * 1024**2, marks_every=4 * 1024**2)
    else:
        write_large_encapsulated(local, 40 * 1024**2)
    _drop_multipart(workflow, local, "large/mr.dcm")
    with _GetMeter() as meter:
        reports = workflow.run_pipe()
    assert [o.status for r in reports for o in r.objects] == ["published"]
    published = workflow.research_objects()
    assert len(published) == 1
    [(_key, data)] = published.items()
    assert data == Engine(load_rules(), TEST_KEY).process(local).data
    if kind == "native":
        # The header step's prefix and what it lends the first part, IndexHeader's prefix: a few
        # MiB, never the 40 MiB of pixels.
        assert meter.fetched < 12 * 1024**2, meter.fetched
    else:
        # Encapsulated pixels stream by once for the framing walk and once for the index.
        assert meter.fetched < 2 * local.stat().st_size + 12 * 1024**2, meter.fetched
    [item] = workflow.table_items(workflow.names.index_table)
    assert item.get("frames"), "the index locates the frames of the streamed object"
