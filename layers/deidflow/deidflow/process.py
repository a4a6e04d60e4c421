"""One instance in, de-identified bytes (or a rejection) out: what every entry point calls.

The CLI, the Lambdas and the local workflow all go through `process_instance`, so they apply the
same checks, rules and output layout.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import pydicom

from .deidentify import Deidentifier, DeidResult
from .intake import AcceptPolicy, Rejected, check_cleanable, read_dataset
from .pseudonym import Pseudonymizer
from .rules import RuleSet
from .storage import research_key


@dataclass(frozen=True)
class ProcessedInstance:
    key: str  # research_key(...) of the output
    data: bytes
    study_uid: str
    series_uid: str
    sop_uid: str
    result: DeidResult


class Engine:
    """Rules + key + profile table, built once per process (or Lambda container)."""

    def __init__(self, rules: RuleSet, key: bytes):
        self.rules = rules
        self.policy = AcceptPolicy(rules.max_file_bytes, rules.accept_sop_classes)
        self.deidentifier = Deidentifier(
            rules, Pseudonymizer(key, min_shift_days=rules.min_shift_days, max_shift_days=rules.max_shift_days)
        )

    def process(self, source: str | os.PathLike[str] | bytes, *, explain: bool = False) -> ProcessedInstance:
        """De-identify one file; raises Rejected with a reason when it cannot be made safe."""
        ds = read_dataset(source, self.policy)
        check_cleanable(ds, self.policy)
        plan = self.rules.plan_for(ds)
        if not plan.forward:
            raise Rejected(
                "out_of_scope", "not in the rules' scope_to_forward (labels: " + ", ".join(sorted(plan.labels)) + ")"
            )
        if plan.burned_in:
            raise Rejected(
                "pixels_unavailable",
                "the rules ask for burned-in text removal, which this build cannot do yet; nothing was written",
            )
        try:
            result = self.deidentifier.deidentify(ds, explain=explain, plan=plan)
        except Rejected:
            raise
        except Exception as exc:  # noqa: BLE001 - damage surfaces when values are decoded
            raise Rejected("unparseable", f"an element could not be de-identified ({type(exc).__name__})") from None
        if plan.transcode and plan.transcode != str(ds.file_meta.TransferSyntaxUID):
            _transcode(result.dataset, plan.transcode)
        buffer = io.BytesIO()
        try:
            pydicom.dcmwrite(buffer, result.dataset, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001
            raise Rejected(
                "unwritable", f"the de-identified data set could not be encoded ({type(exc).__name__})"
            ) from None
        return ProcessedInstance(
            key=research_key(result.study_uid, result.series_uid, result.sop_uid),
            data=buffer.getvalue(),
            study_uid=result.study_uid,
            series_uid=result.series_uid,
            sop_uid=result.sop_uid,
            result=result,
        )


def _transcode(ds: pydicom.Dataset, transfer_syntax: str) -> None:
    from .rules import NATIVE_TRANSFER_SYNTAXES

    try:
        if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress()
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        else:
            ds.compress(transfer_syntax)
    except Exception as exc:  # noqa: BLE001
        raise Rejected("transcode_failed", f"could not transcode to {transfer_syntax} ({type(exc).__name__})") from None
