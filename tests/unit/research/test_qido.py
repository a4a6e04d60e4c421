"""QIDO-RS matching (PS3.4 C.2.2.2 as PS3.18 uses it) and parameters, and the claims the HTTP API hands over."""

from __future__ import annotations

import pytest
from deidflow.cloud.research_api import ProfilesSource, caller_from_claims
from deidflow.research.qido import BadQuery, parse_query


def _match(params: dict[str, list[str]], record: dict, level: str = "study") -> bool:
    return parse_query(params, level).accepts(record)


def _el(vr: str, *values: object) -> dict:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


RECORD = {
    "00080020": _el("DA", "20240315"),
    "00080030": _el("TM", "101530.25"),
    "00100010": _el("PN", {"Alphabetic": "Pseudo^Patient"}),
    "00100020": _el("LO", "P-0042"),
    "00081030": _el("LO", "CT CHEST"),
    "00080061": _el("CS", "CT", "SR"),
    "0020000D": _el("UI", "2.25.7"),
    "00080050": _el("SH"),
}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"StudyDate": ["20240315"]}, True),
        ({"StudyDate": ["20240101-20240331"]}, True),
        ({"StudyDate": ["-20240314"]}, False),
        ({"StudyDate": ["20240315-"]}, True),
        ({"StudyTime": ["10-11"]}, True),  # a bound to the hour covers the hour
        ({"StudyTime": ["1016-"]}, False),
        ({"PatientName": ["*patient*"]}, True),  # PN: case-insensitive, as OHIF's *…* searches expect
        ({"PatientName": ["pseudo^patient"]}, True),
        ({"PatientName": ["Other*"]}, False),
        ({"00100020": ["P-0042"]}, True),
        ({"PatientID": ["p-0042"]}, False),  # other text: case-sensitive
        ({"StudyDescription": ["CT*"]}, True),
        ({"StudyDescription": ["*MR*"]}, False),
        ({"StudyDescription": ["CT CHES?"]}, True),
        ({"ModalitiesInStudy": ["SR"]}, True),
        ({"StudyInstanceUID": ["2.25.1\\2.25.7"]}, True),
        ({"StudyInstanceUID": ["2.25.1,2.25.7"]}, True),
        ({"StudyInstanceUID": ["2.25.1", "2.25.7"]}, True),
        ({"StudyInstanceUID": ["2.25.1"]}, False),
        ({"AccessionNumber": [""]}, True),  # universal matching
        ({"AccessionNumber": ["A1"]}, False),  # an empty attribute matches no constraint
        ({"StudyDate": ["20240315"], "PatientID": ["nope"]}, False),
    ],
)
def test_matching(params, expected):
    assert _match(params, RECORD) is expected


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"limit": ["-1"]}, "non-negative"),
        ({"offset": ["x"]}, "non-negative"),
        ({"includefield": ["NotAKeyword"]}, "neither a DICOM keyword"),
        ({"PatientName": ["a", "b"]}, "only UIDs take a list"),
        ({"00400275.00321060": ["x"]}, "sequence paths"),
        ({"fuzzymatching": ["maybe"]}, "true or false"),
        ({"SOPInstanceUID": ["1"]}, "cannot be matched in a study query"),
    ],
)
def test_bad_parameters_say_why(params, words):
    with pytest.raises(BadQuery, match=words):
        parse_query(params, "study")


def test_limit_is_capped_with_a_warning_and_fuzzy_matching_is_declined_politely():
    query = parse_query({"limit": ["5000"], "fuzzymatching": ["true"]}, "study")
    assert query.limit == 1000 and len(query.warnings) == 2
    assert parse_query({"fuzzymatching": ["false"]}, "study").warnings == ()


def test_a_path_uid_cannot_be_matched_again():
    with pytest.raises(BadQuery):
        parse_query({"StudyInstanceUID": ["2.25.1"]}, "series", fixed={0x0020000D})
    assert parse_query({"StudyInstanceUID": ["2.25.1"]}, "series").matches


def test_array_claims_arrive_as_one_bracketed_string():
    caller = caller_from_claims(
        {"sub": "s", "username": "alice", "cognito:groups": "[lung-team us-teaching]", "client_id": "portal"}
    )
    assert caller.groups == {"lung-team", "us-teaching"} and caller.username == "alice"
    assert caller_from_claims({"sub": "s", "cognito:groups": "[]"}).groups == frozenset()
    id_token = caller_from_claims({"sub": "s", "cognito:username": "bob", "aud": "portal"})
    assert (id_token.username, id_token.client_id) == ("bob", "portal")
    machine = caller_from_claims({"sub": "pipeline", "client_id": "pipeline", "token_use": "access"})
    assert machine.is_machine and machine.client_id == "pipeline"


class _FakeS3:
    def __init__(self, text: str):
        self.text, self.etag, self.gets = text, '"1"', 0

    def head_object(self, **_: object) -> dict:
        return {"ETag": self.etag}

    def get_object(self, **_: object) -> dict:
        import io

        self.gets += 1
        return {"Body": io.BytesIO(self.text.encode()), "ETag": self.etag}


PROFILES = "version: 1\nprofiles: {}\n"


def test_the_profiles_file_is_reread_when_it_changes_and_only_then():
    s3, now = _FakeS3(PROFILES), [0.0]
    source = ProfilesSource(s3, "b", "profiles.yaml", clock=lambda: now[0])
    first = source.current()
    now[0] = 10.0
    assert source.current() is first and s3.gets == 1, "within 30 s the container trusts its copy"
    now[0] = 40.0
    assert source.current() is first and s3.gets == 1, "same ETag: not read again"
    s3.text, s3.etag = PROFILES + "description: changed\n", '"2"'
    now[0] = 80.0
    assert source.current().version != first.version and s3.gets == 2
