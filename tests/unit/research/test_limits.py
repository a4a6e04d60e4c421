"""Lambda's 6 MB response limit is designed for: a 1,000-instance series' metadata fits once
gzipped, and an answer that cannot fit is a 413 that says what to do, never a failed Lambda."""

from __future__ import annotations

import copy
import gzip
import json

import pydicom
import pytest
from deidflow.cloud.research_api import MAX_BINARY_BODY_BYTES, MAX_TEXT_BODY_BYTES, fitted
from deidflow.index import index_entry
from deidflow.research.header import InstanceRecord
from deidflow.research.profiles import Caller, load_profiles_text
from deidflow.research.service import Answer, ApiError, ResearchService
from deidflow.research.visibility import Access
from pydicom.data import get_testdata_file

EVERYTHING = load_profiles_text(
    "version: 1\nprofiles:\n  all: {description: all, scope: {labels: [ALL]}, level: study, actions: [view]}\n"
    "assignments: [{users: [u], profiles: [all]}]\n"
)


class SeriesIndex:
    """One study of `count` CT instances whose headers vary as a real series' do."""

    def __init__(self, count: int):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        base = index_entry(ds, "studies/1/series/2/instances/3.dcm").item
        header = json.loads(base["dicom_json"])
        self.records = []
        for n in range(count):
            item = dict(base)
            h = copy.deepcopy(header)
            sop = f"2.25.{10**30 + n * 7919}"
            h["00080018"]["Value"] = [sop]
            h["00200013"] = {"vr": "IS", "Value": [n + 1]}
            h["00200032"]["Value"] = [-158.1 + n * 0.01, -179.0 - n * 0.003, -75.0 + n * 0.625]
            h["00201041"] = {"vr": "DS", "Value": [-75.0 + n * 0.625]}
            h["00080033"] = {"vr": "TM", "Value": [f"1015{n % 60:02d}.{n:06d}"]}
            item.update(sop_instance_uid=sop, dicom_json=json.dumps(h), instance_sort=f"{n:010d}#{sop}")
            self.records.append(InstanceRecord.from_item(item))
        self.study = self.records[0].study_instance_uid

    def studies(self):
        return [(self.study, {})]

    def study_instances(self, study_uid):
        return self.records if study_uid == self.study else []


def test_the_metadata_of_a_1000_instance_series_fits_a_lambda_response_once_gzipped():
    index = SeriesIndex(1000)
    service = ResearchService(
        index, store=None, base_url="https://example.execute-api.eu-west-1.amazonaws.com/dicomweb"
    )  # type: ignore[arg-type]
    access = Access.of(Caller("s", "u"), EVERYTHING, __import__("datetime").date(2026, 12, 2))
    answer = service.metadata(access, index.study)
    raw = len(answer.body)
    sent = fitted(answer, "gzip, deflate")
    print(f"1,000-instance series metadata: {raw:,} bytes, {len(sent.body):,} gzipped ({raw / len(sent.body):.0f}x)")
    assert sent.headers["Content-Encoding"] == "gzip"
    assert len(gzip.decompress(sent.body)) == raw
    assert len(sent.body) < MAX_BINARY_BODY_BYTES / 4, "room for headers four times larger than CT_small's"


def test_an_answer_that_cannot_fit_is_a_413_saying_what_to_do():
    big = Answer(200, b"[" + b"0," * (MAX_TEXT_BODY_BYTES // 2) + b"0]", "application/dicom+json")
    with pytest.raises(ApiError) as refused:
        fitted(big, "")
    assert refused.value.status == 413 and "Accept-Encoding: gzip" in refused.value.reason
    assert fitted(Answer(200, big.body, "application/dicom+json"), "gzip").headers["Content-Encoding"] == "gzip"
    small = fitted(Answer(200, b"[]", "application/dicom+json"), "gzip")
    assert "Content-Encoding" not in small.headers, "tiny answers are not worth compressing"
