"""Which instances get their pixels scanned, which frames are examined, which boxes are fixed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from pydicom import Dataset

from ..dicomraw.read import text_value
from ..tags import PIXEL_DATA_KEYWORDS
from .boxes import RedactionBox
from .text_filter import TextFilter

ScanMode = Literal["auto", "always", "never"]
FrameSampling = Literal["changes", "sample", "all"]
LossyOutput = Literal["compressed", "explicit-vr-little-endian", "jpeg-2000-lossless"]
# The same words as values, for the rules' schema and the checks below.
SCAN_MODES: tuple[str, ...] = get_args(ScanMode)
FRAME_SAMPLINGS: tuple[str, ...] = get_args(FrameSampling)
LOSSY_OUTPUTS: tuple[str, ...] = get_args(LossyOutput)

# Modalities whose images usually carry burned-in patient text (ultrasound headers, angiography
# and fluoroscopy annotations, endoscopy/photo overlays, screen captures).
TEXT_PRONE_MODALITIES = frozenset({"US", "IVUS", "XA", "RF", "ES", "XC", "OT", "SC", "GM", "OP"})

# Cross-sectional modalities whose pixels are left alone when the header says there is no text.
CROSS_SECTIONAL_MODALITIES = frozenset({"CT", "MR", "PT", "NM"})

# SOP classes that are screen grabs or video/photo captures whatever the Modality says.
TEXT_PRONE_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image Storage
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.1.1",  # Enhanced XA Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.12.2.1",  # Enhanced XRF Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL Endoscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.1.1",  # Video Endoscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.2",  # VL Microscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.2.1",  # Video Microscopic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.4",  # VL Photographic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.4.1",  # Video Photographic Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.5.1",  # Ophthalmic Photography 8 Bit Image Storage
        "1.2.840.10008.5.1.4.1.1.77.1.5.2",  # Ophthalmic Photography 16 Bit Image Storage
    }
)


@dataclass(frozen=True)
class DeviceSignature:
    """CTP-style signature: where a given device model always burns its header in.

    String conditions match case-insensitively as substrings (CTP's ``containsIgnoreCase``);
    ``None`` means "any". Boxes are in pixels of the matching image.
    """

    boxes: tuple[RedactionBox, ...]
    manufacturer: str | None = None
    model: str | None = None
    rows: int | None = None
    columns: int | None = None
    name: str = ""

    def matches(self, ds: Dataset) -> bool:
        def contains(keyword: str, wanted: str | None) -> bool:
            if wanted is None:
                return True
            value = ds.get(keyword)
            return value is not None and wanted.lower() in str(value).lower()

        def equals(keyword: str, wanted: int | None) -> bool:
            if wanted is None:
                return True
            value = ds.get(keyword)
            return value is not None and int(value) == wanted

        return (
            contains("Manufacturer", self.manufacturer)
            and contains("ManufacturerModelName", self.model)
            and equals("Rows", self.rows)
            and equals("Columns", self.columns)
        )

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> DeviceSignature:
        """From rules-file data: {name, manufacturer, model, rows, columns, boxes: [[x0,y0,x1,y1]...]}."""
        name = str(spec.get("name", ""))
        boxes = tuple(
            _box_from_spec(box, f"device-signature:{name}" if name else "device-signature")
            for box in spec.get("boxes", ())
        )
        if not boxes:
            raise ValueError("a device signature needs at least one box")
        return cls(
            boxes=boxes,
            manufacturer=spec.get("manufacturer"),
            model=spec.get("model"),
            rows=int(spec["rows"]) if spec.get("rows") is not None else None,
            columns=int(spec["columns"]) if spec.get("columns") is not None else None,
            name=name,
        )


def _box_from_spec(spec: Any, source: str) -> RedactionBox:
    if isinstance(spec, RedactionBox):
        return spec
    if isinstance(spec, Mapping):
        if "width" in spec:
            return RedactionBox.from_xywh(
                int(spec["x"]), int(spec["y"]), int(spec["width"]), int(spec["height"]), 1.0, source
            )
        return RedactionBox(int(spec["x0"]), int(spec["y0"]), int(spec["x1"]), int(spec["y1"]), 1.0, source)
    x0, y0, x1, y1 = (int(v) for v in spec)
    return RedactionBox(x0, y0, x1, y1, 1.0, source)


@dataclass(frozen=True)
class PixelPolicy:
    """What the rules say about pixels for one instance (the rules engine picks the policy).

    mode: "auto" decides from the header (see ``needs_pixel_scan``); "always" scans every image;
        "never" leaves pixels alone (overlays and icons are still removed).
    detector: name for ``make_detector`` ("local", "rekognition", "tesseract", "none").
    manual_boxes: always redacted on scanned instances (research-pacs "Manual" regions).
    device_signatures: boxes redacted when the header matches (CTP-style signatures).
    margin: pixels added around every box before filling.
    frame_sampling: which frames of a cine the detector looks at; what it finds on them is
        redacted in every frame. "sample": first, middle, last and every ``sample_every``-th
        frame. "changes" (the default): those, and every frame showing text-like strokes that
        no frame detected so far showed, outside the boxes already found (see sampling.py), so
        that text in a few frames only is not missed; every frame is decoded and rendered for
        that, a few milliseconds each against the detector's tens to hundreds. "all": every frame.
    trust_no_for_text_prone: whether BurnedInAnnotation NO is believed for US/XA/SC/...;
        off by default because devices and converters set it wrongly and a leak costs more
        than a scan.
    lossy_output: how lossy input that cannot be redacted in the DCT domain is written back
        after redaction (see encode.py): "compressed" (lossless, or irreversible JPEG 2000 when
        lossless is over ``max_growth`` times the input), "explicit-vr-little-endian",
        "jpeg-2000-lossless".
    jpeg_in_dct_domain: redact JPEG Baseline/Extended by blanking its 8x8 blocks in the code stream
        (same syntax and size, no new lossy step); off, JPEG is decoded and re-encoded like the
        other lossy input (for comparison, or as an escape hatch).
    max_growth: how many times the input's Pixel Data a "compressed" lossless re-encoding may take.
    remove_overlays / remove_icons: drop 60xx overlay groups and IconImageSequence everywhere.
    allow_unscanned: publish an instance whose pixels must be scanned when the detector is "none"
        and no fixed box applies (pixels nobody looked at); off, such an instance is rejected.
    text_filter: which detected boxes hold text and are redacted (text_filter.py; rules:
        ``pixels.text_filter``, a mapping of its thresholds).
    """

    mode: ScanMode = "auto"
    detector: str = "local"
    allow_unscanned: bool = False
    manual_boxes: tuple[RedactionBox, ...] = ()
    device_signatures: tuple[DeviceSignature, ...] = ()
    margin: int = 4
    frame_sampling: FrameSampling = "changes"
    sample_every: int = 10
    trust_no_for_text_prone: bool = False
    lossy_output: LossyOutput = "compressed"
    jpeg_in_dct_domain: bool = True
    max_growth: float = 1.5
    remove_overlays: bool = True
    remove_icons: bool = True
    detector_options: Mapping[str, Any] = field(default_factory=dict)
    max_decoded_bytes: int | None = None  # what decoding for a scan may take (rules: accept.max_decoded_mb)
    text_filter: TextFilter = field(default_factory=TextFilter)

    def __post_init__(self) -> None:
        if self.mode not in SCAN_MODES:
            raise ValueError(f"pixel mode must be auto, always or never, not {self.mode!r}")
        if self.frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"frame_sampling must be one of {', '.join(FRAME_SAMPLINGS)}, not {self.frame_sampling!r}")
        if self.margin < 0 or self.sample_every < 0:
            raise ValueError("margin and sample_every must be >= 0")
        if self.lossy_output not in LOSSY_OUTPUTS:
            raise ValueError(f"unknown lossy_output {self.lossy_output!r}")
        if not isinstance(self.text_filter, TextFilter):
            object.__setattr__(self, "text_filter", TextFilter.from_mapping(dict(self.text_filter)))
        if not self.max_growth > 0:
            raise ValueError("max_growth must be > 0")
        object.__setattr__(self, "manual_boxes", tuple(_box_from_spec(b, "manual") for b in self.manual_boxes))
        object.__setattr__(
            self,
            "device_signatures",
            tuple(
                s if isinstance(s, DeviceSignature) else DeviceSignature.from_mapping(s) for s in self.device_signatures
            ),
        )


def _code(ds: Dataset, keyword: str) -> str:
    return text_value(ds, keyword, "CS").strip().upper()


def matching_signatures(ds: Dataset, policy: PixelPolicy) -> list[DeviceSignature]:
    return [signature for signature in policy.device_signatures if signature.matches(ds)]


def fixed_boxes(ds: Dataset, policy: PixelPolicy) -> list[RedactionBox]:
    """Manual boxes plus boxes of every matching device signature."""
    boxes = list(policy.manual_boxes)
    for signature in matching_signatures(ds, policy):
        boxes.extend(signature.boxes)
    return boxes


def has_pixels(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in PIXEL_DATA_KEYWORDS)


def needs_pixel_scan(ds: Dataset, policy: PixelPolicy) -> tuple[bool, str]:
    """Decide whether this instance's pixels are examined and redacted; say why (no PHI in reasons).

    auto: scan when BurnedInAnnotation is YES; when fixed boxes (manual, device signature)
    apply; when it is absent (or NO, unless trusted) for text-prone modalities and SOP classes;
    never for CT/MR/PT/NM flagged NO; otherwise not.
    """
    if not has_pixels(ds):
        return False, "no pixel data"
    if policy.mode == "never":
        return False, "pixel policy is never"
    if policy.mode == "always":
        return True, "pixel policy is always"

    burned_in = _code(ds, "BurnedInAnnotation")
    modality = _code(ds, "Modality")
    sop_class = text_value(ds, "SOPClassUID", "UI").strip()
    text_prone = modality in TEXT_PRONE_MODALITIES or sop_class in TEXT_PRONE_SOP_CLASSES
    kind = f"modality {modality}" if modality in TEXT_PRONE_MODALITIES else "a capture SOP class"

    if burned_in == "YES":
        return True, "BurnedInAnnotation is YES"
    if policy.manual_boxes:
        return True, "manual redaction boxes configured"
    if matching_signatures(ds, policy):
        return True, "device signature matches"
    if burned_in == "NO":
        if modality in CROSS_SECTIONAL_MODALITIES and sop_class not in TEXT_PRONE_SOP_CLASSES:
            return False, f"BurnedInAnnotation is NO for {modality}"
        if text_prone and not policy.trust_no_for_text_prone:
            return True, f"BurnedInAnnotation NO not trusted for {kind}"
        return False, "BurnedInAnnotation is NO"
    if text_prone:
        return True, f"BurnedInAnnotation absent for {kind}"
    return False, f"BurnedInAnnotation {'absent' if not burned_in else 'not YES'} for modality {modality or 'absent'}"


def frames_to_detect(number_of_frames: int, policy: PixelPolicy) -> list[int]:
    """The fixed frame indices the detector looks at: first, middle, last and every Nth, or all.

    For "changes" these are the fixed samples; sampling.py adds the frames where text changes."""
    if number_of_frames <= 0:
        return []
    if policy.frame_sampling == "all":
        return list(range(number_of_frames))
    chosen = {0, (number_of_frames - 1) // 2, number_of_frames - 1}
    if policy.sample_every:
        chosen.update(range(0, number_of_frames, policy.sample_every))
    return sorted(chosen)


def policy_from_mapping(spec: Mapping[str, Any] | None) -> PixelPolicy:
    """Build a policy from rules-file data (keys are PixelPolicy field names); unknown keys fail."""
    if not spec:
        return PixelPolicy()
    known = set(PixelPolicy.__dataclass_fields__)
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown pixel policy keys: {sorted(unknown)}")
    values = dict(spec)
    for key in ("manual_boxes", "device_signatures"):
        if key in values:
            values[key] = tuple(_as_sequence(values[key]))
    return PixelPolicy(**values)


def policy_from_rules(burned_in_rules: Iterable[Any], base: PixelPolicy | None = None) -> PixelPolicy:
    """The pixel policy for one instance from the rules' RemoveBurnedInAnnotations entries.

    Duck-typed on objects with ``type`` ("ocr" | "manual"), ``boxes`` ([[left, top, right,
    bottom], ...]) and ``detector`` (name or None), like ``deidflow.rules.BurnedInRule``.
    No entries: ``base`` as is (mode "auto" by default). Entries: the rules asked for pixel
    cleaning of this instance, so mode becomes "always"; manual boxes are collected; an "ocr"
    entry selects its detector (or keeps ``base.detector``), and with only manual entries the
    detector is "none".
    """
    base = base or PixelPolicy()
    rules = list(burned_in_rules)
    if not rules:
        return base
    manual = list(base.manual_boxes)
    detector = "none"
    for rule in rules:
        kind = str(getattr(rule, "type", "")).lower()
        if kind == "manual":
            manual.extend(_box_from_spec(box, "manual") for box in getattr(rule, "boxes", ()))
        elif kind == "ocr":
            detector = getattr(rule, "detector", None) or (base.detector if base.detector != "none" else "local")
        else:
            raise ValueError(f"unknown burned-in annotation rule type {kind!r}")
    return replace(base, mode="always", manual_boxes=tuple(manual), detector=detector)


def _as_sequence(value: Any) -> Iterable[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError("expected a list")
    return value
