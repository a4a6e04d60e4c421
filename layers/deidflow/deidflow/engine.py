"""One instance in, de-identified bytes (or a rejection) out: what every entry point calls.

The CLI, the Lambdas and the local workflow all go through `Engine.process`, so they apply the
same checks, rules and output layout.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import BinaryIO

import pydicom
from pydicom.uid import UID

from .deidentify import Decision, Deidentifier, DeidResult
from .dicomraw.write import encode_file_spans
from .intake import AcceptPolicy, Instance, Rejected, check_cleanable, read_instance
from .parts import Part, SourceFile, has_spans, join_parts, output_size, write_parts
from .pixels import (
    DetectionError,
    DetectorBusy,
    PixelDecodeError,
    PixelEncodeError,
    PixelResult,
    PixelsTooLarge,
    PixelsUntrusted,
    TextDetector,
    clear_embedded_overlays,
    fixed_boxes,
    make_detector,
    needs_pixel_scan,
    policy_from_mapping,
    policy_from_rules,
    redact_burned_in_text,
)
from .pseudonym import Pseudonymizer
from .rejection import Unavailable
from .rules import InstancePlan, RuleSet
from .storage import research_key
from .tags import PIXEL_DATA_KEYWORDS, WRITABLE_NATIVE_SYNTAXES

# With `Engine.process(path, stream=True)`, values longer than this stay in the source file until
# the output is written (see parts.py): a CT slice's Pixel Data, not its header.
STREAM_VALUES_ABOVE = 64 * 1024


@dataclass(frozen=True)
class ProcessedInstance:
    key: str  # research_key(...) of the output
    # The output file in pieces, as a file writer takes them (LocalStore.put): bytes, and with
    # `stream=True` SourceSpans of `source`, valid while that file is as it was read.
    parts: list[Part]
    study_uid: str
    series_uid: str
    sop_uid: str
    result: DeidResult
    pixels: PixelResult | None = None
    source: SourceFile | None = None

    @property
    def warnings(self) -> tuple[str, ...]:
        """What was published on the rules' explicit say-so, which a reviewer should know about."""
        return ("pixels_unscanned",) if self.pixels is not None and self.pixels.unscanned else ()

    @cached_property
    def data(self) -> bytes:
        """The output file as one byte string (for S3 and readers)."""
        return join_parts(self.parts, self.source)

    @property
    def size(self) -> int:
        return output_size(self.parts)

    def write_to(self, out: BinaryIO) -> None:
        """The output file into `out`, spans copied from the source by the kernel."""
        write_parts(out, self.parts, self.source)


class PixelScanRequired(Exception):
    """`process(..., scan_pixels=False)` met an instance whose pixels must be scanned for text.

    The workflow's header step raises this to route the object to the burned-in text step, which
    runs with the detector and the memory that scanning needs.
    """


class Engine:
    """Rules + key + profile table, built once per process (or Lambda container)."""

    def __init__(
        self,
        rules: RuleSet,
        key: bytes,
        *,
        detector: str | None = None,
        detectors: Callable[[str], TextDetector] = make_detector,
    ):
        """`detector` replaces the rules' text detector (the Lambdas use "rekognition");
        `detectors` builds one by name (the edge's, where a detector needs a client)."""
        self.make_detector = detectors
        self.rules = rules
        self.detector_override = detector
        self.policy = AcceptPolicy(rules.max_file_bytes, rules.accept_sop_classes)
        self.pixel_policy = replace(
            policy_from_mapping(dict(rules.pixels)),
            remove_overlays=not rules.options.clean_graphics,
            max_decoded_bytes=rules.max_decoded_bytes,
        )
        self._detectors: dict[str, TextDetector] = {}
        self.deidentifier = Deidentifier(
            rules, Pseudonymizer(key, min_shift_days=rules.min_shift_days, max_shift_days=rules.max_shift_days)
        )

    def process(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        explain: bool = False,
        scan_pixels: bool = True,
        stream: bool = False,
    ) -> ProcessedInstance:
        """De-identify one file; raises Rejected with a reason when it cannot be made safe.

        With `scan_pixels=False`, an instance that needs its pixels scanned raises
        PixelScanRequired instead of being scanned. With `stream=True` (a path only), large binary
        values kept as they are never enter memory: the output names them as spans of the file.
        """
        streaming = stream and not isinstance(source, bytes)
        identity = SourceFile.of(source) if streaming else None  # type: ignore[arg-type]  # a path
        instance = read_instance(source, self.policy, defer_above=STREAM_VALUES_ABOVE if streaming else None)
        ds = instance.dataset
        try:
            plan, pixels, result = self._clean(instance, explain=explain, scan_pixels=scan_pixels)
        except (Rejected, PixelScanRequired, Unavailable):  # a busy service is no damage to the file
            raise
        except Exception as exc:  # noqa: BLE001 - damage surfaces when values are decoded
            raise Rejected("unparseable", f"an element could not be read ({type(exc).__name__})") from None
        if plan.transcode and plan.transcode != str(ds.file_meta.TransferSyntaxUID):
            _transcode(result.dataset, plan.transcode)
        # The 128-byte preamble is free for applications (DICOM/TIFF dual files put a TIFF header
        # there, others anything at all): nothing of it reaches the output.
        result.dataset.preamble = bytes(128)
        try:
            # What pydicom.dcmwrite(enforce_file_format=True) writes, byte for byte, but faster.
            parts = encode_file_spans(result.dataset, _encapsulated_lengths(instance) if streaming else None)
        except Exception as exc:  # noqa: BLE001
            raise Rejected(
                "unwritable", f"the de-identified data set could not be encoded ({type(exc).__name__})"
            ) from None
        return ProcessedInstance(
            key=research_key(result.study_uid, result.series_uid, result.sop_uid),
            parts=parts,
            study_uid=result.study_uid,
            series_uid=result.series_uid,
            sop_uid=result.sop_uid,
            result=result,
            pixels=pixels,
            source=identity if has_spans(parts) else None,
        )

    def _clean(
        self, instance: Instance, *, explain: bool, scan_pixels: bool
    ) -> tuple[InstancePlan, PixelResult | None, DeidResult]:
        """Everything between reading and writing: checks, scope, pixels, the header pass."""
        ds = instance.dataset
        check_cleanable(ds, self.policy)
        if instance.pixel_excess:
            # Trailing bytes beyond the declared frames are not pixels anyone can see or check.
            pixel_data = ds[0x7FE00010]
            pixel_data.value = pixel_data.value[: len(pixel_data.value) - instance.pixel_excess]
        plan = self.rules.plan_for(ds)
        if not plan.forward:
            raise Rejected(
                "out_of_scope", "not in the rules' scope_to_forward (labels: " + ", ".join(sorted(plan.labels)) + ")"
            )
        if self.pixel_policy.remove_overlays:
            try:
                clear_embedded_overlays(ds)
            except PixelDecodeError as exc:
                raise Rejected("pixels_failed", f"an embedded overlay could not be removed: {exc}") from None
        had_pixels = explain and any(name in ds for name in PIXEL_DATA_KEYWORDS)
        scan_reason = needs_pixel_scan(ds, policy_from_rules(plan.burned_in, self.pixel_policy))[1] if explain else ""
        pixels = self._clean_pixels(ds, plan, scan_allowed=scan_pixels)
        result = self.deidentifier.deidentify(
            ds,
            explain=explain,
            plan=plan,
            pixels_cleaned=bool(pixels and pixels.redacted),
            frame=instance.framing.dataset,
            originals=instance.originals,
        )
        if had_pixels:
            # The header pass saw the pixels after the pixel stage: what it says of them, the pixel
            # stage's own rows say better.
            rows = pixel_decisions(pixels, scan_reason)
            replaced = {row.path for row in rows}
            result.decisions[:] = [d for d in result.decisions if d.path not in replaced] + rows
        return plan, pixels, result

    def _clean_pixels(self, ds: pydicom.Dataset, plan: InstancePlan, *, scan_allowed: bool) -> PixelResult | None:
        """Burned-in text first, on the original header (it reads Manufacturer, BurnedInAnnotation)."""
        policy = policy_from_rules(plan.burned_in, self.pixel_policy)
        scan, reason = needs_pixel_scan(ds, policy)
        if not scan:
            # The pixels stay exactly as they are; overlays and icon images are still removed, by
            # the header pass (Table E.1-1 removes 60xx groups and the Icon Image Sequence).
            return None
        if not scan_allowed:
            raise PixelScanRequired
        detector = self._detector(policy.detector)
        unscanned = detector.name == "none" and not fixed_boxes(ds, policy)
        if unscanned and not policy.allow_unscanned:
            raise Rejected(
                "pixels_unscanned",
                f"the pixels must be scanned for burned-in text ({reason}) and the detector is 'none';"
                " the rules' pixels.allow_unscanned: true publishes them as they are",
            )
        try:
            result = redact_burned_in_text(ds, policy, detector)
        except PixelsTooLarge as exc:
            raise Rejected("too_large", str(exc)) from None
        except PixelsUntrusted as exc:
            raise Rejected("pixels_untrusted", f"the decoded pixels cannot be trusted: {exc}") from None
        except DetectorBusy as exc:
            raise Unavailable(str(exc)) from None
        except (PixelDecodeError, DetectionError, PixelEncodeError) as exc:
            raise Rejected("pixels_failed", f"burned-in text could not be cleaned ({type(exc).__name__})") from None
        return replace(result, unscanned=unscanned)

    def _detector(self, name: str) -> TextDetector:
        """Detectors load models: one of each per process (or Lambda container), made on first use."""
        if self.detector_override and name != "none":
            name = self.detector_override
        if name not in self._detectors:
            self._detectors[name] = self.make_detector(name)
        return self._detectors[name]


def _encapsulated_lengths(instance: Instance) -> dict[int, int]:
    """Where encapsulated Pixel Data's value starts in the file -> its length without the sequence
    delimiter (what the framing walk found, and pydicom does not keep for a deferred value)."""
    pixel = instance.framing.pixel_data
    if pixel is None or not pixel.encapsulated:
        return {}
    return {pixel.offset: pixel.length - 8}


def _transcode(ds: pydicom.Dataset, transfer_syntax: str) -> None:
    # pydicom gives a transcoded instance a new random SOP Instance UID unless told otherwise: the
    # keyed one must stay (same input, same output; references to the instance still resolve).
    try:
        if transfer_syntax in WRITABLE_NATIVE_SYNTAXES:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
        else:
            ds.compress(transfer_syntax, generate_instance_uid=False)
    except Exception as exc:  # noqa: BLE001
        raise Rejected("transcode_failed", f"could not transcode to {transfer_syntax} ({type(exc).__name__})") from None


def pixel_decisions(pixels: PixelResult | None, scan_reason: str) -> list[Decision]:
    """What the pixel stage did, as `explain` rows: Pixel Data, Burned In Annotation, and the
    overlays and icon images it removed (boxes are coordinates, never values)."""
    by = f"pixel stage: {pixels.reason if pixels else scan_reason}"
    if pixels is None or not pixels.scanned:
        return [Decision("(7FE0,0010)", "PixelData", "OB", "kept (not scanned)", by)]
    by += f"; detector {pixels.detector}; frames scanned {list(pixels.frames_scanned) or 'none'}"
    if pixels.redacted:
        done = (
            f"redacted: {len(pixels.boxes)} box(es) in {pixels.frames_redacted} frame(s),"
            f" re-encoded {pixels.transfer_syntax_in} -> {pixels.transfer_syntax_out}"
        )
    elif pixels.unscanned:
        done = "kept unscanned (pixels.allow_unscanned)"
    else:
        done = "kept (scanned: no text found)"
    rows = [Decision("(7FE0,0010)", "PixelData", "OB", done, by)]
    if pixels.redacted:
        rows.append(Decision("(0028,0301)", "BurnedInAnnotation", "CS", "set to NO", "pixel stage: the text is gone"))
    if pixels.overlays_removed:
        rows.append(
            Decision(
                "(60xx,xxxx)", "overlay groups", "--", f"removed ({pixels.overlays_removed})", "pixel stage: overlays"
            )
        )
    if pixels.icons_removed:
        rows.append(
            Decision(
                "(0088,0200)", "IconImageSequence", "SQ", f"removed ({pixels.icons_removed})", "pixel stage: icons"
            )
        )
    return rows
