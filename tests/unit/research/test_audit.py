"""The research API's audit trail: records, sealed segments, verification (pure), and the AWS edge
against moto (the table, the Object Lock bucket, the head parameter), the sealer and the CLI."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from deidflow.research.audit import (
    AuditRecord,
    ChainHead,
    canonical_json,
    format_ts,
    parse_head,
    seal_segment,
    sha256_hex,
    verify_chain,
)


def record(ts: str, request_id: str, *, sub: str = "sub-a", studies: tuple[str, ...] = ("1.2.826.0.1.1",), **kw):
    fields = {
        "username": "alice",
        "groups": ("researchers",),
        "client_id": "portal",
        "source_ip": "192.0.2.10",
        "user_agent": "pytest",
        "profiles": ("default",),
        "profiles_version": "ab" * 32,
        "action": "qido.studies",
        "query": "limit=10&offset=0",
        **kw,
    }
    return AuditRecord(ts=ts, request_id=request_id, sub=sub, studies=studies, **fields)


def boto3_numbers(value):
    """What the Table resource hands back: every number a Decimal."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, list):
        return [boto3_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: boto3_numbers(v) for k, v in value.items()}
    return value


# -- records ------------------------------------------------------------------------------------------


def test_a_record_round_trips_through_its_item_with_decimal_numbers():
    # Catches: a field lost or renamed in to_item/from_item, Decimals left in (not ints), tuples
    # coming back as lists, a None instance or empty tuples not restored.
    full = record(
        "2026-12-02T07:01:02.345Z",
        "req-1",
        action="wado.frames",
        series=("1.2.826.0.1.2",),
        instance="1.2.826.0.1.3",
        frames=(1, 2, 7),
        count=3,
        bytes=123456,
        status=206,
    )
    bare = record("2026-12-02T07:01:02.346Z", "req-2", studies=(), groups=(), profiles=(), query="")
    for original in (full, bare):
        item = original.to_item()
        back = AuditRecord.from_item(boto3_numbers(item))
        assert back == original
        assert all(isinstance(getattr(back, name), int) for name in ("count", "bytes", "status"))
        assert all(type(f) is int for f in back.frames)


def test_the_item_keys_and_what_is_left_out():
    # Catches: a key layout the by_day index or the per-user partition cannot use, floats (the
    # Table resource refuses them), empty lists or a None instance written as attributes.
    item = record("2026-12-02T07:01:02.345Z", "req-1", studies=()).to_item()
    assert item["pk"] == "u#sub-a#2026-12"
    assert item["sk"] == "2026-12-02T07:01:02.345Z#req-1"
    assert item["day"] == "2026-12-02"
    assert "studies" not in item and "frames" not in item and "instance" not in item
    assert not any(isinstance(v, float) for v in item.values())


def test_an_item_whose_key_disagrees_with_its_fields_is_refused():
    # Catches: an item edited in the table (ts changed, key not) being read as if it were consistent.
    item = record("2026-12-02T07:01:02.345Z", "req-1").to_item()
    item["ts"] = "2026-12-02T07:01:03.000Z"
    with pytest.raises(ValueError, match="key does not match"):
        AuditRecord.from_item(item)


def test_timestamps_are_fixed_width_utc_milliseconds():
    # Catches: timestamps whose string order is not time order (the sort keys and windows rely on it).
    assert format_ts(datetime(2026, 12, 2, 7, 1, 2, 345999, tzinfo=UTC)) == "2026-12-02T07:01:02.345Z"
    cet = datetime(2026, 12, 2, 8, 1, 2, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert format_ts(cet) == "2026-12-02T08:01:02.000Z"
    with pytest.raises(ValueError):
        format_ts(datetime(2026, 12, 2, 7, 1, 2))  # naive
    for bad in ("2026-12-02T07:01:02Z", "2026-12-02 07:01:02.345Z", "2026-12-02T07:01:02.345+00:00"):
        with pytest.raises(ValueError):
            record(bad, "req-1")
    with pytest.raises(ValueError, match="request_id"):
        record("2026-12-02T07:01:02.345Z", "")


def test_the_canonical_form_is_sorted_compact_ascii():
    # Catches: a serialisation that depends on field order, whitespace or the platform's encoding.
    line = record("2026-12-02T07:01:02.345Z", "req-1", username="zoë").canonical()
    data = json.loads(line)
    assert list(data) == sorted(data)
    assert b" " not in line.replace(b"user_agent", b"") and line.isascii()
    assert AuditRecord.from_dict(data).username == "zoë"


# -- sealing and verification (pure) ------------------------------------------------------------------

W0, W1, W2, W3 = (
    "2026-12-01T00:00:00.000Z",
    "2026-12-01T12:00:00.000Z",
    "2026-12-02T00:00:00.000Z",
    "2026-12-02T06:00:00.000Z",
)


def three_segments():
    first = seal_segment(
        [record("2026-12-01T01:00:00.000Z", "a"), record("2026-12-01T02:00:00.000Z", "b")], None, W0, W1
    )
    second = seal_segment(
        [record("2026-12-01T13:00:00.000Z", "c"), record("2026-12-01T14:00:00.000Z", "d")], first.head, W1, W2
    )
    third = seal_segment([], second.head, W2, W3)  # an empty window gets its segment
    return [first, second, third]


def test_a_segment_is_deterministic_ordered_and_headed():
    # Catches: a rerun after a crash writing different bytes (a second version = tampering), records
    # sealed in arrival order, a header that does not say what the chain needs.
    records = [record(f"2026-12-01T0{h}:00:00.000Z", f"r{h}") for h in range(1, 10)]
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)
    first = seal_segment(records, None, W0, W1)
    assert seal_segment(shuffled, None, W0, W1).data == first.data
    lines = first.data.decode().splitlines()
    assert json.loads(lines[0]) == {"segment": 1, "previous_sha256": None, "window": [W0, W1], "count": 9}
    assert [json.loads(line)["request_id"] for line in lines[1:]] == [f"r{h}" for h in range(1, 10)]
    assert first.key == "segments/2026/12/01/000000000001.jsonl"
    assert first.sha256 == sha256_hex(first.data)
    assert first.head == ChainHead(1, first.key, first.sha256, W1)
    second = seal_segment([], first.head, W1, W2)
    assert json.loads(second.data.splitlines()[0])["previous_sha256"] == first.sha256
    assert second.key == "segments/2026/12/02/000000000002.jsonl"


def test_sealing_refuses_what_would_make_an_invalid_segment():
    # Catches: a record sealed in the wrong window, or a gap between windows made by the sealer.
    with pytest.raises(ValueError, match="outside the window"):
        seal_segment([record("2026-12-01T12:00:00.000Z", "edge")], None, W0, W1)  # the end is excluded
    first = seal_segment([], None, W0, W1)
    with pytest.raises(ValueError, match="start where the previous one ended"):
        seal_segment([], first.head, W2, W3)
    with pytest.raises(ValueError, match="end after it starts"):
        seal_segment([], None, W1, W1)


def test_the_chain_head_round_trips_as_a_string():
    # Catches: a head that cannot be stored in (or read back from) the SSM parameter.
    head = three_segments()[-1].head
    assert ChainHead.from_json(head.to_json()) == head
    assert parse_head("{}") is None
    with pytest.raises(ValueError):
        parse_head('{"seq": 1}')


def test_an_intact_chain_verifies():
    # Catches: false alarms on what the sealer writes (empty segments included).
    segments = three_segments()
    report = verify_chain({s.key: s.data for s in segments}, segments[-1].head)
    assert report.ok, report.problems
    assert (report.segments, report.records) == (3, 4)
    assert verify_chain([(s.key, s.data) for s in segments], segments[-1].head).ok  # pairs work too
    assert verify_chain({}, None).ok


def problems_of(mapping, head):
    return [str(p) for p in verify_chain(mapping, head).problems]


def test_an_edited_segment_is_named():
    # Catches: an edit going unnoticed, in the middle (the next header's hash) or at the end (the head's).
    segments = three_segments()
    head = segments[-1].head
    for edited in (0, 1):
        mapping = {s.key: s.data for s in segments}
        key = segments[edited].key
        mapping[key] = mapping[key].replace(b"alice", b"mallory")
        found = problems_of(mapping, head)
        assert found == [f"{key}: its bytes do not match the hash segment {edited + 2} recorded (edited)"]
    # The last segment: a record added to an empty window, its count fixed; only the head knows.
    last = segments[2]
    added = record("2026-12-02T01:00:00.000Z", "forged").canonical() + b"\n"
    forged = last.data.replace(b'"count":0', b'"count":1') + added
    found = problems_of({s.key: s.data for s in segments} | {last.key: forged}, head)
    assert found == [f"{last.key}: its bytes do not match the chain head's hash (edited)"]


def test_a_missing_segment_is_found_in_the_middle_and_at_the_head():
    # Catches: a deleted segment hiding in a chain that otherwise links (seq gap), and a deleted
    # last segment (only the head knows it existed).
    segments = three_segments()
    for dropped in (0, 1, 2):
        mapping = {s.key: s.data for s in segments if s is not segments[dropped]}
        found = problems_of(mapping, segments[-1].head)
        assert f"segment {dropped + 1:012d}: missing (deleted, or never written)" in found, found


def test_a_removed_or_reordered_record_is_found():
    # Catches: removing a line (with or without fixing the count) and swapping two lines.
    segments = three_segments()
    head = segments[-1].head
    key = segments[0].key
    header, line_a, line_b = segments[0].data.splitlines(keepends=True)

    removed = {s.key: s.data for s in segments} | {key: header + line_b}
    found = problems_of(removed, head)
    assert any("counts 2 record(s), it holds 1" in p for p in found) and any("edited" in p for p in found)

    recounted_header = header.replace(b'"count":2', b'"count":1')
    found = problems_of({s.key: s.data for s in segments} | {key: recounted_header + line_b}, head)
    assert found and all("edited" in p for p in found), found  # the hash chain still catches it

    found = problems_of({s.key: s.data for s in segments} | {key: header + line_b + line_a}, head)
    assert any("out of order" in p for p in found), found


def test_an_unreadable_segment_is_named_once_and_still_checked_by_hash():
    # Catches: garbage in a segment reported as a missing segment (the wrong diagnosis), or the
    # hash check skipped for it.
    segments = three_segments()
    mapping = {s.key: s.data for s in segments} | {segments[0].key: b"not json\n"}
    assert problems_of(mapping, segments[-1].head) == [
        f"{segments[0].key}: unreadable: unreadable header (JSONDecodeError)",
        f"{segments[0].key}: its bytes do not match the hash segment 2 recorded (edited)",
    ]


def forged_chain(lines_per_segment, windows):
    """A chain an attacker rebuilt end to end (every hash and the head recomputed): only the checks
    that do not rely on hashes can see what is wrong with it."""
    previous, mapping = None, {}
    for seq, (lines, (start, end)) in enumerate(zip(lines_per_segment, windows, strict=True), start=1):
        header = {
            "segment": seq,
            "previous_sha256": previous and previous.sha256,
            "window": [start, end],
            "count": len(lines),
        }
        data = b"".join(line + b"\n" for line in [canonical_json(header), *lines])
        key = f"segments/{end[:4]}/{end[5:7]}/{end[8:10]}/{seq:012d}.jsonl"
        previous = ChainHead(seq, key, sha256_hex(data), end)
        mapping[key] = data
    return mapping, previous


def test_a_record_out_of_its_window_and_a_gap_between_windows_are_found():
    # Catches: a record moved into another segment, a window skipped (records between two segments
    # never sealed), even when the attacker rebuilt every hash.
    late = record("2026-12-01T13:00:00.000Z", "late").canonical()
    mapping, head = forged_chain([[late], []], [(W0, W1), (W1, W2)])
    assert any("1 record(s) outside its window" in p for p in problems_of(mapping, head))
    mapping, head = forged_chain([[], []], [(W0, W1), (W2, W3)])
    assert any(f"its window starts at {W2}, the previous one ended at {W1}" in p for p in problems_of(mapping, head))


def test_segments_past_the_head_and_duplicate_numbers_are_found():
    # Catches: a head rolled back (or a segment planted after it), two segments with one number.
    segments = three_segments()
    mapping = {s.key: s.data for s in segments}
    found = problems_of(mapping, segments[1].head)
    assert any(p.startswith(segments[2].key) and "past the chain head" in p for p in found)
    copy_key = segments[2].key.replace("/02/", "/03/")
    found = problems_of(mapping | {copy_key: segments[2].data}, segments[2].head)
    assert any("appears under several keys" in p for p in found)
    assert any(p.startswith(copy_key) and "does not match its window's end" in p for p in found)
    assert problems_of({"segments/junk.txt": b"x"}, None) == [
        "segments/junk.txt: not a segment key (segments/<yyyy>/<mm>/<dd>/<seq>.jsonl)"
    ]


# -- the AWS edge (moto) --------------------------------------------------------------------------------

TABLE, BUCKET, PARAMETER = "deidflow-audit", "deidflow-audit-segments", "/deidflow/audit/head"
T0 = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)


@pytest.fixture
def aws(monkeypatch):
    """moto's table (the template's schema), Object Lock bucket (compliance) and head parameter."""
    import boto3
    from moto import mock_aws

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        dynamodb = boto3.resource("dynamodb")
        table = dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": name, "AttributeType": "S"} for name in ("pk", "sk", "day")],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": "by_day",
                    "KeySchema": [
                        {"AttributeName": "day", "KeyType": "HASH"},
                        {"AttributeName": "sk", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        s3 = boto3.client("s3")
        s3.create_bucket(
            Bucket=BUCKET,
            CreateBucketConfiguration={"LocationConstraint": "eu-west-1"},
            ObjectLockEnabledForBucket=True,
        )
        s3.put_object_lock_configuration(
            Bucket=BUCKET,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 30}},
            },
        )
        ssm = boto3.client("ssm")
        ssm.put_parameter(Name=PARAMETER, Value="{}", Type="String")
        yield type("Aws", (), {"table": table, "s3": s3, "ssm": ssm})


def write_all(aws, *records):
    from deidflow.cloud.audit import AuditLog

    log = AuditLog(aws.table)
    for r in records:
        log.write(r)


def at(moment: datetime, request_id: str, **kw):
    return record(format_ts(moment), request_id, **kw)


def seal(aws, now: datetime, **kw):
    from deidflow.cloud.audit import seal_pending

    return seal_pending(aws.table, aws.s3, BUCKET, aws.ssm, PARAMETER, now=now, **kw)


def sealed_request_ids(aws) -> list[str]:
    from deidflow.cloud.audit import read_segments

    return [
        json.loads(line)["request_id"]
        for data in read_segments(aws.s3, BUCKET).values()
        for line in data.splitlines()[1:]
    ]


def verify(aws):
    from deidflow.cloud.audit import verify_bucket

    return verify_bucket(aws.s3, BUCKET, aws.ssm, PARAMETER)


def test_a_record_round_trips_through_the_table(aws):
    # Catches: an item the real Table resource refuses (floats, empty key strings), or one that
    # comes back different (Decimals, lists).
    original = at(T0, "req-1", frames=(3, 1), instance="1.2.3", query="")
    write_all(aws, original)
    item = aws.table.get_item(Key={"pk": "u#sub-a#2026-12", "sk": original.sort_key})["Item"]
    assert AuditRecord.from_item(item) == original


def test_write_never_overwrites_a_record(aws):
    # Catches: a reused request id silently replacing the earlier record (put_item's default).
    from botocore.exceptions import ClientError

    first = at(T0, "req-1")
    write_all(aws, first)
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):
        write_all(aws, at(T0, "req-1", username="someone-else"))
    item = aws.table.get_item(Key={"pk": "u#sub-a#2026-12", "sk": first.sort_key})["Item"]
    assert item["username"] == "alice"


def test_write_raises_when_the_table_is_unusable(aws):
    # Catches: a swallowed failure (the API must answer 503, not serve an unrecorded request).
    import boto3
    from botocore.exceptions import ClientError
    from deidflow.cloud.audit import AuditLog

    with pytest.raises(ClientError, match="ResourceNotFound"):
        AuditLog(boto3.resource("dynamodb").Table("no-such-table")).write(at(T0, "req-1"))


def test_nothing_to_seal_before_the_first_record(aws):
    # Catches: an empty first segment with an invented window, or a crash on an empty table.
    assert seal(aws, T0) is None
    assert aws.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"] == "{}"


def test_every_record_is_sealed_exactly_once_across_runs(aws):
    # Catches: records skipped between windows, sealed twice, sealed while still inside the margin
    # (a slow request's record written after the window was read), and empty windows breaking the chain.
    write_all(aws, at(T0 - timedelta(hours=3), "early"), at(T0 - timedelta(minutes=5), "five-ago"))
    write_all(aws, at(T0 - timedelta(seconds=30), "in-margin"))
    first = seal(aws, T0)
    assert first is not None and first.head.seq == 1
    assert first.head.window_end == format_ts(T0 - timedelta(minutes=2))
    assert json.loads(first.data.splitlines()[0])["window"][0] == "2026-12-02T00:00:00.000Z"  # the earliest day
    assert sorted(sealed_request_ids(aws)) == ["early", "five-ago"]

    # A slow request: its ts is before the first window's end, it is written after the run.
    write_all(aws, at(T0 - timedelta(seconds=119), "slow"), at(T0 + timedelta(minutes=3), "later"))
    second = seal(aws, T0 + timedelta(minutes=10))
    assert second is not None and second.count == 3
    third = seal(aws, T0 + timedelta(minutes=15))  # nothing new: an empty segment
    assert third is not None and third.count == 0 and third.head.seq == 3
    assert seal(aws, T0 + timedelta(minutes=15)) is None  # the window would be empty of time
    write_all(aws, at(T0 + timedelta(minutes=14), "last"))
    assert seal(aws, T0 + timedelta(minutes=20)).count == 1

    ids = sealed_request_ids(aws)
    assert sorted(ids) == sorted(["early", "five-ago", "in-margin", "slow", "later", "last"])
    assert len(ids) == len(set(ids))
    report = verify(aws)
    assert report.ok, report.problems
    assert (report.segments, report.records) == (4, 6)


def test_segments_are_written_with_a_checksum_under_compliance_retention(aws):
    # Catches: a put the Object Lock bucket refuses (no checksum), or one without retention.
    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    segment = seal(aws, T0)
    stored = aws.s3.head_object(Bucket=BUCKET, Key=segment.key, ChecksumMode="ENABLED")
    assert stored["ObjectLockMode"] == "COMPLIANCE"
    import base64

    assert base64.b64decode(stored["ChecksumSHA256"]).hex() == segment.sha256
    assert aws.s3.get_object(Bucket=BUCKET, Key=segment.key)["Body"].read() == segment.data


def test_a_long_outage_is_caught_up_a_day_per_segment(aws):
    # Catches: one segment holding weeks of records (a Lambda's memory), or days lost while catching up.
    write_all(aws, *(at(T0 - timedelta(days=d), f"d{d}") for d in range(4)))
    segments = []
    while (segment := seal(aws, T0 + timedelta(minutes=5))) is not None:
        segments.append(segment)
    assert [s.count for s in segments] == [1, 1, 1, 1]
    assert sorted(sealed_request_ids(aws)) == ["d0", "d1", "d2", "d3"]
    assert verify(aws).ok


def test_a_crash_between_the_segment_and_the_head_is_recovered(aws, monkeypatch):
    # Catches: a rerun writing a second, different segment with the same number (a tampering alarm
    # and a forked chain), or skipping the orphan's window.
    import deidflow.cloud.audit as edge

    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    real_write_head = edge.write_head

    def crash(*args, **kw):
        raise RuntimeError("the Lambda timed out")

    monkeypatch.setattr(edge, "write_head", crash)
    with pytest.raises(RuntimeError):
        seal(aws, T0)
    assert aws.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"] == "{}"  # the head did not move
    monkeypatch.setattr(edge, "write_head", real_write_head)

    write_all(aws, at(T0 + timedelta(minutes=1), "r2"))
    adopted = seal(aws, T0 + timedelta(minutes=10))  # a later `now`: the orphan's window is kept
    assert adopted.head.seq == 1 and adopted.head.window_end == format_ts(T0 - timedelta(minutes=2))
    following = seal(aws, T0 + timedelta(minutes=10))
    assert following.head.seq == 2 and following.count == 1
    assert sorted(sealed_request_ids(aws)) == ["r1", "r2"]
    versions = aws.s3.list_object_versions(Bucket=BUCKET, Prefix="segments/")["Versions"]
    assert len(versions) == 2  # one version per segment
    assert verify(aws).ok


def test_a_segment_planted_after_the_head_is_not_adopted(aws):
    # Catches: adopting whatever follows the head; here a window reaching into the future, which
    # would stop all sealing until then.
    from deidflow.cloud.audit import AuditChainError

    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    good = seal(aws, T0)
    planted = seal_segment([], good.head, good.head.window_end, "2026-12-02T23:59:59.000Z")
    aws.s3.put_object(Bucket=BUCKET, Key=planted.key, Body=planted.data, ChecksumAlgorithm="SHA256")
    with pytest.raises(AuditChainError, match="its window does not"):
        seal(aws, T0 + timedelta(minutes=10))
    assert parse_head(aws.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]) == good.head


def test_an_orphan_that_no_longer_matches_the_table_stops_the_sealer(aws, monkeypatch):
    # Catches: adopting a crashed run's segment although a record has since appeared in its window
    # (written later than the margin allows, or the table was edited): that record would never be sealed.
    import deidflow.cloud.audit as edge

    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    real_write_head = edge.write_head

    def crash(*args, **kw):
        raise RuntimeError("the Lambda timed out")

    monkeypatch.setattr(edge, "write_head", crash)
    with pytest.raises(RuntimeError):
        seal(aws, T0)
    monkeypatch.setattr(edge, "write_head", real_write_head)
    write_all(aws, at(T0 - timedelta(minutes=4), "late-beyond-margin"))  # inside the orphan's window
    with pytest.raises(edge.AuditChainError, match="sealing its window again gives other bytes"):
        seal(aws, T0 + timedelta(minutes=20))
    assert aws.ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"] == "{}"


def test_verify_detects_a_new_version_with_edited_bytes(aws):
    # Catches: an overwrite hidden by versioning (compliance mode keeps the original, the attacker
    # adds a version on top), both through the chain and through the versions themselves.
    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    first = seal(aws, T0)
    seal(aws, T0 + timedelta(minutes=10))
    aws.s3.put_object(
        Bucket=BUCKET, Key=first.key, Body=first.data.replace(b"alice", b"mallory"), ChecksumAlgorithm="SHA256"
    )
    found = [str(p) for p in verify(aws).problems]
    assert f"{first.key}: its bytes do not match the hash segment 2 recorded (edited)" in found
    assert f"{first.key}: 2 versions with different bytes: overwritten after sealing" in found


def test_verify_detects_a_deleted_segment(aws):
    # Catches: a delete marker (all compliance mode allows) making a segment disappear quietly.
    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    first = seal(aws, T0)
    seal(aws, T0 + timedelta(minutes=10))
    aws.s3.delete_object(Bucket=BUCKET, Key=first.key)
    found = [str(p) for p in verify(aws).problems]
    assert "segment 000000000001: missing (deleted, or never written)" in found
    assert f"{first.key}: deleted: a delete marker hides its sealed version(s)" in found


def test_query_records_by_user_and_by_study(aws):
    # Catches: "who looked at this study" or "what did this user see" missing or mixing records.
    write_all(
        aws,
        at(T0, "a1", sub="sub-a", studies=("1.1", "1.2")),
        at(T0 + timedelta(days=1), "a2", sub="sub-a", studies=("1.3",)),
        at(T0, "b1", sub="sub-b", studies=("1.2",)),
        at(T0, "b2", sub="sub-b", studies=()),
    )
    from deidflow.cloud.audit import query_records

    days = ["2026-12-02", "2026-12-03"]
    ids = lambda records: [r.request_id for r in records]  # noqa: E731
    assert ids(query_records(aws.table, days=days, sub="sub-a", study=None)) == ["a1", "a2"]
    assert ids(query_records(aws.table, days=days, sub=None, study="1.2")) == ["a1", "b1"]
    assert ids(query_records(aws.table, days=days, sub="sub-b", study="1.2")) == ["b1"]
    assert ids(query_records(aws.table, days=days[:1], sub=None, study=None)) == ["a1", "b1", "b2"]


def test_the_sealer_handler_reads_its_settings_and_reports_counts(aws, monkeypatch):
    # Catches: a handler that needs settings it is not given, or returns more than keys and counts.
    from deidflow.cloud.audit import sealer_handler
    from deidflow.local.workflow import LambdaContext

    context = LambdaContext("arn:aws:lambda:eu-west-1:123456789012:function:audit-sealer")
    monkeypatch.delenv("AUDIT_TABLE", raising=False)
    with pytest.raises(RuntimeError, match="AUDIT_TABLE"):
        sealer_handler({}, context)
    monkeypatch.setenv("AUDIT_TABLE", TABLE)
    monkeypatch.setenv("AUDIT_BUCKET", BUCKET)
    monkeypatch.setenv("AUDIT_HEAD_PARAMETER", PARAMETER)
    now = datetime.now(UTC)
    write_all(aws, at(now - timedelta(days=1, minutes=5), "y"), at(now - timedelta(minutes=5), "t"))
    result = sealer_handler({}, context)
    assert result["count"] == 2 and result["segments"] in (2, 3)
    assert result["segment"].startswith("segments/") and set(result) == {"segment", "segments", "count", "head"}
    again = sealer_handler({}, context)
    assert again["segments"] <= 1 and again["count"] == 0
    assert verify(aws).ok


# -- the CLI --------------------------------------------------------------------------------------------


def test_cli_audit_verify_exits_0_when_intact_and_1_with_a_line_per_problem(aws, capsys):
    # Catches: a verify command that says "intact" regardless, or hides which segment is wrong.
    from deidflow.cli import EXIT_FAILED, EXIT_OK, main

    write_all(aws, at(T0 - timedelta(minutes=5), "r1"))
    first = seal(aws, T0)
    seal(aws, T0 + timedelta(minutes=10))
    assert main(["audit", "verify", "--bucket", BUCKET, "--parameter", PARAMETER]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out == ["audit chain intact: 2 segment(s), 1 record(s), sealed up to 2026-12-02T07:08:00.000Z"]

    aws.s3.put_object(Bucket=BUCKET, Key=first.key, Body=first.data + b"{}\n", ChecksumAlgorithm="SHA256")
    assert main(["audit", "verify", "--bucket", BUCKET, "--parameter", PARAMETER]) == EXIT_FAILED
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines and all(line.startswith(first.key + ": ") for line in lines), lines
    assert "NOT intact" in captured.err


def test_cli_audit_verify_on_a_missing_parameter_fails_with_aws_s_reason(aws, capsys):
    # Catches: a traceback, or "intact", when the head cannot be read.
    from deidflow.cli import EXIT_FAILED, main

    assert main(["audit", "verify", "--bucket", BUCKET, "--parameter", "/no/such"]) == EXIT_FAILED
    assert "ParameterNotFound" in capsys.readouterr().err


def test_cli_audit_query_prints_one_json_line_per_matching_record(aws, capsys):
    # Catches: the filters or the day range ignored, output that is not one parseable record a line.
    from deidflow.cli import EXIT_OK, EXIT_USAGE, main

    write_all(
        aws,
        at(T0, "a1", studies=("1.2",)),
        at(T0 + timedelta(days=1), "a2", studies=("1.3",)),
        at(T0, "b1", sub="sub-b", studies=("1.2",)),
    )
    base = ["audit", "query", "--table", TABLE, "--since", "2026-12-02", "--until", "2026-12-03"]
    assert main([*base, "--user", "sub-a"]) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert [AuditRecord.from_dict(json.loads(line)).request_id for line in lines] == ["a1", "a2"]
    assert main([*base, "--study", "1.2"]) == EXIT_OK
    assert [json.loads(line)["request_id"] for line in capsys.readouterr().out.splitlines()] == ["a1", "b1"]
    assert main(["audit", "query", "--table", TABLE, "--since", "2026-12-03", "--until", "2026-12-02"]) == EXIT_USAGE
    with pytest.raises(SystemExit):
        main(["audit", "query", "--table", TABLE, "--since", "02/12/2026"])
