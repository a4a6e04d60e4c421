"""The research API's audit trail: records, sealed segments, verification (pure), and the AWS edge
against moto (the table, the Object Lock bucket, the head parameter), the sealer and the CLI."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
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
