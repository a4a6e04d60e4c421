"""Object references in state payloads: the key travels sealed, opens only with its key and bucket,
and a payload round-trips to the same object."""

from __future__ import annotations

import json
import secrets

import pytest
from deidflow.cloud.objects import SEALED_KEY_PREFIX, KeySeal, ObjectRef

KEY = "incoming/DOE^JANE 1961-04-02/MRN 12345678/img 1.dcm"


@pytest.fixture
def seal() -> KeySeal:
    return KeySeal(secrets.token_bytes(32))


def test_a_payload_names_no_key_and_opens_to_the_same_object(seal):
    ref = ObjectRef("ingest", KEY, version_id="v1", size=10, ref="obj-1", round=2)
    payload = ref.as_payload(seal)
    text = json.dumps(payload)
    assert "key" not in payload and payload["sealed_key"].startswith(SEALED_KEY_PREFIX)
    for word in ("DOE", "JANE", "12345678", "1961", "incoming"):
        assert word not in text
    back = ObjectRef.from_payload({"source": payload}, seal)
    assert back == ref
    # Carried on, the object is not sealed again: every state shows the same token.
    assert back.as_payload(seal) == payload


def test_each_sealing_differs_so_equal_keys_are_not_linkable(seal):
    assert seal.seal("ingest", KEY) != seal.seal("ingest", KEY)


def test_a_sealed_key_opens_only_with_its_key_and_its_bucket(seal):
    sealed = seal.seal("ingest", KEY)
    assert seal.open("ingest", sealed) == KEY
    with pytest.raises(ValueError):
        seal.open("other-bucket", sealed)  # moved to another bucket's payload
    with pytest.raises(ValueError):
        KeySeal(secrets.token_bytes(32)).open("ingest", sealed)  # another deployment's key
    tampered = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(ValueError):
        seal.open("ingest", tampered)
    with pytest.raises(ValueError):
        seal.open("ingest", KEY)  # a key in clear is not a sealed one


def test_a_hand_made_event_may_name_its_key_in_clear(seal):
    """`sam local invoke -e events/<step>.json`: the samples cannot hold a deployment's seal."""
    ref = ObjectRef.from_payload({"source": {"bucket": "ingest", "key": KEY, "ref": "obj-1"}}, seal)
    assert ref.key == KEY and ref.sealed_key is None
    assert "key" not in ref.as_payload(seal)


def test_the_leak_check_reads_around_sealed_keys_not_through_them():
    """Ciphertext in base64url holds any 3 letters by chance; a value in the open is still found."""
    from tests.workflow.endstate import leaks

    sealed = SEALED_KEY_PREFIX + "q9MRNx_ACC-" + "A" * 40
    assert leaks(json.dumps({"source": {"sealed_key": sealed}}), ["MRN", "ACC"]) == []
    assert leaks(json.dumps({"source": {"sealed_key": sealed}, "detail": "MRN 1234"}), ["MRN", "ACC"]) == ["MRN"]
