import hashlib
import hmac
import re

import pytest
from deidflow.pseudonym import Pseudonymizer, object_ref

from ..conftest import OTHER_KEY, TEST_KEY

UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_same_key_and_input_give_the_same_pseudonyms_in_a_new_instance():
    a, b = Pseudonymizer(TEST_KEY), Pseudonymizer(TEST_KEY)
    assert a.uid("1.2.3.4") == b.uid("1.2.3.4")
    assert a.patient_id("id:|MRN1") == b.patient_id("id:|MRN1")
    assert a.date_shift("id:|MRN1") == b.date_shift("id:|MRN1")


def test_a_different_key_gives_different_pseudonyms():
    a, b = Pseudonymizer(TEST_KEY), Pseudonymizer(OTHER_KEY)
    assert a.uid("1.2.3.4") != b.uid("1.2.3.4")
    assert a.patient_id("id:|MRN1") != b.patient_id("id:|MRN1")


def test_uids_are_valid_and_distinct_for_many_originals():
    p = Pseudonymizer(TEST_KEY)
    originals = [f"1.2.840.99.{i}" for i in range(20000)]
    mapped = [p.uid(u) for u in originals]
    assert len(set(mapped)) == len(originals)
    assert all(UID_RE.match(u) and len(u) <= 64 for u in mapped)


def test_identifiers_fit_short_string_vrs_and_never_echo_the_original():
    p = Pseudonymizer(TEST_KEY)
    ids = {p.identifier("AccessionNumber", f"ACC{i}") for i in range(5000)}
    assert len(ids) == 5000
    assert all(len(i) == 16 and re.fullmatch(r"[A-Z2-7]+", i) for i in ids)
    assert len(p.patient_id("id:|X")) <= 16


def test_date_shift_stays_in_the_configured_window_with_sub_day_part_under_twelve_hours():
    p = Pseudonymizer(TEST_KEY, min_shift_days=30, max_shift_days=60)
    for n in range(2000):
        shift = p.date_shift(f"patient-{n}")
        assert -60 <= shift.days <= -30
        assert abs(shift.seconds) <= 43200


def test_an_object_ref_is_a_keyed_hmac_of_bucket_and_key_that_never_echoes_them():
    ref = object_ref(TEST_KEY, "ingest", "incoming/Quixfeldt^Zebulon/img.dcm")
    expected = hmac.new(
        TEST_KEY, b"deidflow/object-ref/v1\x1fingest/incoming/Quixfeldt^Zebulon/img.dcm", hashlib.sha256
    ).hexdigest()[:32]
    assert ref == "obj-" + expected
    assert re.fullmatch(r"obj-[0-9a-f]{32}", ref)
    assert object_ref(TEST_KEY, "ingest", "incoming/Quixfeldt^Zebulon/img.dcm") == ref  # deterministic
    assert object_ref(OTHER_KEY, "ingest", "incoming/Quixfeldt^Zebulon/img.dcm") != ref
    assert object_ref(TEST_KEY, "other", "incoming/Quixfeldt^Zebulon/img.dcm") != ref
    # Not the pseudonymisation derivation under another name.
    assert ref[4:] not in Pseudonymizer(TEST_KEY).digest("uid", "ingest/incoming/Quixfeldt^Zebulon/img.dcm").hex()
    with pytest.raises(ValueError):
        object_ref(b"short", "ingest", "k")
