"""Keyed, deterministic pseudonyms: UIDs, identifiers, names and per-patient date shifts.

Everything derives from HMAC-SHA256(key, domain | original). The same key and original give the same
pseudonym in any process, order or retry, so no lock or lookup table is needed to stay consistent;
distinct originals give distinct pseudonyms (128-bit UIDs, 80-bit identifiers).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

# UUID-derived UID root (PS3.5 B.2): any 128-bit integer under 2.25 is a valid, globally unique UID.
UID_ROOT = "2.25."
SECONDS_PER_DAY = 86400


@dataclass(frozen=True)
class DateShift:
    """An offset for dates and times: `days`, plus `seconds` (the rules' shift_datetime moves times
    by seconds; a patient's own offset is whole days, see Pseudonymizer.date_shift)."""

    days: int
    seconds: int

    @property
    def total_seconds(self) -> int:
        return self.days * SECONDS_PER_DAY + self.seconds


MIN_KEY_BYTES = 16  # 128 bits: below that a keyed pseudonym can be brute-forced
# Domain of object references (object_ref): versioned, so a new derivation never collides with this one.
OBJECT_REF_DOMAIN = "deidflow/object-ref/v1"
OBJECT_REF_PREFIX = "obj-"
# The default range of a patient's date shift, in days (1 to 10 years back).
MIN_SHIFT_DAYS, MAX_SHIFT_DAYS = 365, 3650


class Pseudonymizer:
    def __init__(self, key: bytes, *, min_shift_days: int = MIN_SHIFT_DAYS, max_shift_days: int = MAX_SHIFT_DAYS):
        if len(key) < MIN_KEY_BYTES:
            raise ValueError(f"pseudonymisation key must be at least {MIN_KEY_BYTES} bytes")
        if not 0 <= min_shift_days <= max_shift_days:
            raise ValueError("date shift range must satisfy 0 <= min <= max")
        self._key = key
        self._min_days = min_shift_days
        self._max_days = max_shift_days
        self._uid_cache: dict[str, str] = {}

    @property
    def fingerprint(self) -> str:
        """Names the key without revealing it: outputs made with one key carry the same one."""
        return self.digest("key-fingerprint", "").hex()[:32]

    def digest(self, domain: str, original: str) -> bytes:
        return hmac.new(self._key, f"{domain}\x1f{original}".encode(), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        cached = self._uid_cache.get(original)
        if cached is None:
            number = int.from_bytes(self.digest("uid", original)[:16], "big")
            cached = self._uid_cache[original] = f"{UID_ROOT}{number}"
        return cached

    def identifier(self, domain: str, original: str, length: int = 16) -> str:
        """An uppercase base32 token (A-Z, 2-7): valid in LO, SH and CS, and never the original."""
        token = base64.b32encode(self.digest(domain, original)).decode().rstrip("=")
        return token[:length]

    def patient_id(self, patient_identity: str) -> str:
        return "P" + self.identifier("patient", patient_identity, 15)

    def text(self, original: str, context: str = "", length: int = 8) -> str:
        """research-pacs RandomizeText: an 8-character token, keyed by the reuse context."""
        return self.identifier(f"text:{context}", original, length)

    def date_shift(self, patient_identity: str) -> DateShift:
        """Move every date of a patient back by the same whole number of days, between min and max.

        Whole days, and times of day as they were: a part-day offset carries a date paired with a
        time across midnight for some instances of a study and not for others (a time near
        midnight, a time missing), and researchers group by study date: one study, one date.
        Intervals between any two dates and times stay exact either way.
        """
        value = int.from_bytes(self.digest("date-shift", patient_identity)[:8], "big")
        span_days = self._max_days - self._min_days + 1
        return DateShift(days=-(self._min_days + value % span_days), seconds=0)

    def bounded_shift(self, original: str, context: str, bound: int) -> int:
        """research-pacs ShiftDateTime: an offset in [-bound, +bound], keyed by the reuse context."""
        value = int.from_bytes(self.digest(f"shift:{context}", original)[:8], "big")
        return value % (2 * bound + 1) - bound


def object_ref(key: bytes, bucket: str, object_key: str) -> str:
    """The name logs and the status table give an ingest object: `obj-` + 128 bits of
    HMAC-SHA256(key, domain | bucket/key). Object keys are PHI (users name folders after
    patients); the reference is not, and whoever holds the key (an operator, `deidflow
    object-ref`) can compute it from a key to find the object's status and log lines.

    Its key is the object-reference key (ObjectRefKeySecret), not the pseudonymisation key: every
    pipeline function that logs may read it, and holding it recomputes no pseudonym."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"object-reference key must be at least {MIN_KEY_BYTES} bytes")
    message = f"{OBJECT_REF_DOMAIN}\x1f{bucket}/{object_key}".encode()
    return OBJECT_REF_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
