"""A mutation fuzzer: damaged and hostile variants of PHI-laden DICOM, as a buggy modality or an
attacker would send them, and the judge of what the engine did with each.

A seed is an encoded instance with identifying tokens planted in it. A case is one seed with one
mutation from one family:

    flip          a few bytes of the header changed at random
    truncate      the file cut anywhere
    length        one element's length changed (off by a few bytes, zero, huge, undefined)
    swallow       one element's length made to take in exactly the next few elements
    vr            one element's VR changed (to another VR, or to bytes that are none)
    retag         one element's tag changed (to a kept tag, a neighbour, an item or delimiter tag)
    order         an element repeated, or two swapped
    nesting       sequences nested up to 200 deep, tokens at the bottom
    huge          a value of tens of kilobytes with tokens in it, or a length past the end
    charset       Specific Character Set changed (unknown, ISO 2022 without escapes, bad UTF-8)
    private       private creators removed, repeated or garbled around private tokens
    pixel_attrs   Rows, Columns, bits, samples, frames or photometric interpretation lying
    pixel_length  Pixel Data shorter, longer, or its length field lying
    fragments     encapsulated fragments damaged, resized, dropped or added
    syntax        the declared transfer syntax lying about the data set that follows

The judge (`judge`) passes a case when the engine rejected it with a reason, or published an
output holding none of the planted tokens (in its bytes or its decoded values) that pydicom reads
back whole; an exception, a crash, a hang or a memory blow-up fails it.

The element locations a mutation needs come from pydicom's reading of the *seed* (which is well
formed), never from the engine under test.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from ..batch import Limits, run_batch
from ..tags import LONG_LENGTH_VRS
from .synthetic import STAFF, make_burned_in_ultrasound, make_corpus

# Planted in every case's bytes by the mutations that append data (after Pixel Data, say).
TRAILER_TOKEN = "ZQTRAILERTOKEN"
_LONG_VRS = {vr.encode() for vr in LONG_LENGTH_VRS}
_SOME_VRS = [b"AE", b"CS", b"DA", b"DS", b"IS", b"LO", b"OB", b"PN", b"SH", b"SQ", b"SS", b"UI", b"UL", b"UN", b"US"]
_KEPT_TAGS = [0x00080008, 0x00080060, 0x00080070, 0x00180050, 0x00180060, 0x00280010, 0x00280030, 0x00281053]
_SYNTAXES = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.826.0.1.3680043.10.1379.5",  # not a transfer syntax anyone knows
]


@dataclass(frozen=True)
class Seed:
    name: str
    dataset: Dataset
    planted: tuple[str, ...]


@dataclass(frozen=True)
class Case:
    seed: str
    family: str
    what: str  # the mutation, in words (no values)
    data: bytes
    planted: tuple[str, ...]


@dataclass(frozen=True)
class _Element:
    tag: int
    offset: int  # where its header starts
    header: int  # 8 or 12 bytes
    vr: bytes  # b"" in implicit VR
    length: int


def plant(ds: Dataset, label: str) -> tuple[str, ...]:
    """Put identifying tokens where identity lives (top level, sequences, private blocks); return them."""
    tokens = {
        name: f"ZQ{label}{name}".upper() for name in ("NAME", "PID", "ACC", "INST", "REF", "OPER", "PRIV", "ITEM")
    }
    ds.PatientName = f"{tokens['NAME']}^GIVEN"
    ds.PatientID = tokens["PID"]
    ds.AccessionNumber = tokens["ACC"]
    ds.InstitutionName = tokens["INST"]
    ds.ReferringPhysicianName = tokens["REF"]
    ds.OperatorsName = tokens["OPER"]
    item = Dataset()
    item.PatientID = tokens["ITEM"]
    item.IssuerOfPatientID = tokens["ITEM"] + "ISS"
    ds.OtherPatientIDsSequence = DicomSequence([item])
    block = ds.private_block(0x0029, "ZQ FUZZ VENDOR", create=True)
    block.add_new(0x10, "LO", tokens["PRIV"])
    return (*tokens.values(), tokens["ITEM"] + "ISS")


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values being written, quoting them
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def with_new_sop_instance_uid(ds: Dataset, n: int) -> Dataset:
    """A copy with a SOP Instance UID of its own: cases never share one (no duplicates, no conflicts)."""
    out = copy.deepcopy(ds)
    uid = UID(f"1.2.826.0.1.3680043.10.1379.6.{n}")
    out.SOPInstanceUID = uid
    if hasattr(out, "file_meta"):
        out.file_meta.MediaStorageSOPInstanceUID = uid
    return out


def _elements(data: bytes) -> tuple[list[_Element], bool, bool]:
    """The seed's top-level elements with their offsets, and (explicit VR, little endian)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    explicit = not ds.original_encoding[0]
    little = bool(ds.original_encoding[1])
    found = []
    for tag in ds.keys():
        raw = ds.get_item(tag)
        tell = getattr(raw, "value_tell", None)
        if tell is None:
            continue  # a sequence pydicom parsed as it read it: no offset kept
        header = 8
        if explicit and data[tell - 12 + 4 : tell - 12 + 6] in _LONG_VRS:
            header = 12
        vr = data[tell - header + 4 : tell - header + 6] if explicit else b""
        found.append(_Element(int(tag), tell - header, header, vr, int(getattr(raw, "length", 0))))
    return found, explicit, little


def _mutable(data: bytes) -> tuple[list[_Element], bool, bool] | None:
    """Element offsets for byte-level mutations, None for a deflated seed (offsets in the inflated stream)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    syntax = str(getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID", ""))
    if syntax == "1.2.840.10008.1.2.1.99":
        return None
    return _elements(data)


def _length_field(element: _Element, explicit: bool, little: bool) -> tuple[int, str]:
    """(offset of the length field, struct format)."""
    order = "<" if little else ">"
    if explicit and element.header == 8:
        return element.offset + 6, order + "H"
    if explicit:
        return element.offset + 8, order + "L"
    return element.offset + 4, order + "L"


def _with_length(data: bytes, element: _Element, length: int, explicit: bool, little: bool) -> bytes:
    at, fmt = _length_field(element, explicit, little)
    length &= 0xFFFF if fmt.endswith("H") else 0xFFFFFFFF
    return data[:at] + struct.pack(fmt, length) + data[at + struct.calcsize(fmt) :]


def _header_end(elements: list[_Element]) -> int:
    pixel = [e for e in elements if e.tag == 0x7FE00010]
    return pixel[0].offset if pixel else (elements[-1].offset if elements else 132)


# --- the families ----------------------------------------------------------------------------------


def _flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    end = _header_end(located[0]) if located else len(data)
    out = bytearray(data)
    count = rng.randint(1, 4)
    for _ in range(count):
        out[rng.randrange(132, max(end, 133))] ^= rng.randrange(1, 256)
    return bytes(out), f"{count} header byte(s) flipped"


def _truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    end = _header_end(located[0]) if located else len(data)
    cut = rng.randrange(1, end) if rng.random() < 0.7 else rng.randrange(1, len(data))
    return data[:cut], f"cut at byte {cut} of {len(data)}"


def _length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located:
        return _flip(data, rng)
    elements, explicit, little = located
    element = rng.choice([e for e in elements if e.tag != 0x7FE00010] or elements)
    choice = rng.choice(["delta", "zero", "max", "undefined"])
    if choice == "delta":
        length = element.length + rng.choice([-3, -2, -1, 1, 2, 7, 8, 12, 40, rng.randint(50, 400)])
    elif choice == "zero":
        length = 0
    elif choice == "max":
        length = 0xFFFF if explicit and element.header == 8 else 0x7FFFFFFF
    else:
        length = 0xFFFFFFFF
    return _with_length(data, element, max(length, 0), explicit, little), f"length of ({element.tag:08X}): {choice}"


def _swallow(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located:
        return _flip(data, rng)
    elements, explicit, little = located
    index = rng.randrange(max(len(elements) - 2, 1))
    element = elements[index]
    count = rng.randint(1, 4)
    following = elements[index + 1 : index + 1 + count]
    if not following:
        return _length(data, rng)
    last = following[-1]
    end = last.offset + last.header + last.length
    length = end - element.offset - element.header
    return _with_length(data, element, length, explicit, little), f"({element.tag:08X}) takes in {len(following)}"


def _vr(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located or not located[1]:
        return _retag(data, rng)
    elements, _, _ = located
    element = rng.choice(elements)
    vr = rng.choice([*_SOME_VRS, b"XX", b"\x00\x00", b"ob"])
    at = element.offset + 4
    return data[:at] + vr + data[at + 2 :], f"VR of ({element.tag:08X}) changed"


def _retag(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located:
        return _flip(data, rng)
    elements, _, little = located
    element = rng.choice(elements)
    new = rng.choice(
        [
            rng.choice(_KEPT_TAGS),
            element.tag + 1,
            element.tag - 1,
            0xFFFEE000,
            0xFFFEE00D,
            0xFFFEE0DD,
            0x00291010,
            0x00020010,
        ]
    )
    order = "<" if little else ">"
    packed = struct.pack(order + "HH", new >> 16, new & 0xFFFF)
    return data[: element.offset] + packed + data[element.offset + 4 :], f"({element.tag:08X}) retagged ({new:08X})"


def _order(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located:
        return _flip(data, rng)
    elements, _, _ = located
    plain = [e for e in elements if e.length != 0xFFFFFFFF]
    if len(plain) < 2:
        return _flip(data, rng)
    index = rng.randrange(len(plain) - 1)
    a, b = plain[index], plain[index + 1]
    a_bytes = data[a.offset : a.offset + a.header + a.length]
    b_bytes = data[b.offset : b.offset + b.header + b.length]
    if b.offset != a.offset + len(a_bytes):
        return _flip(data, rng)
    if rng.random() < 0.5:
        return data[: a.offset] + b_bytes + a_bytes + data[b.offset + len(b_bytes) :], f"({a.tag:08X}) swapped"
    return data[: b.offset] + a_bytes + data[b.offset :], f"({a.tag:08X}) repeated"


def _nesting(ds: Dataset, rng: random.Random, planted: tuple[str, ...]) -> tuple[Dataset, str]:
    depth = rng.choice([20, 60, 100, 200])  # pydicom takes minutes to write 600 levels
    bottom = Dataset()
    bottom.PatientName = planted[0]
    bottom.ReferencedSOPInstanceUID = "1.2.3"
    item = bottom
    for _ in range(depth):
        parent = Dataset()
        parent.ReferencedImageSequence = DicomSequence([item])
        item = parent
    ds.ReferencedImageSequence = item.ReferencedImageSequence
    return ds, f"sequences {depth} deep"


def _huge(ds: Dataset, rng: random.Random, planted: tuple[str, ...]) -> tuple[Dataset, str]:
    keyword = rng.choice(["Manufacturer", "StudyDescription", "ImageComments", "BodyPartExamined"])
    setattr(ds, keyword, (" ".join(planted) + " ") * rng.choice([100, 1000]))
    return ds, f"{keyword} of tens of kilobytes"


def _charset(ds: Dataset, rng: random.Random, planted: tuple[str, ...]) -> tuple[Dataset, str]:
    charset = rng.choice(["FOO", "ISO 2022 IR 87", "ISO_IR 192", "\\ISO 2022 IR 100", "GB18030", "ISO_IR 13"])
    ds.SpecificCharacterSet = charset
    if rng.random() < 0.5:
        # Bytes no character set decodes cleanly around the token.
        ds.add_new(0x00100010, "PN", b"\xff\xfe" + planted[0].encode() + b"\xc3\x28^X")
    return ds, f"character set {charset!r}"


def _private(ds: Dataset, rng: random.Random, planted: tuple[str, ...]) -> tuple[Dataset, str]:
    choice = rng.choice(["no creator", "two creators", "garbled creator", "orphan"])
    block = ds.private_block(0x0029, "ZQ FUZZ VENDOR", create=True)
    block.add_new(0x20, "LO", planted[0])
    creator = 0x00290000 | (block.block_start >> 8)
    if choice == "no creator":
        del ds[creator]
    elif choice == "two creators":
        ds.add_new(creator + 1, "LO", "ZQ FUZZ VENDOR")
        ds.add_new(0x00290000 | ((creator + 1) & 0xFF) << 8 | 0x10, "LO", planted[-2])  # in the second block
    elif choice == "garbled creator":
        ds.add_new(creator, "LO", b"\x00\x01ZQ\xff")
    else:
        ds.add_new(0x00331010, "LO", planted[-2])  # a private element in a block nobody created
    return ds, f"private block: {choice}"


_PIXEL_ATTRIBUTES = (
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "SamplesPerPixel",
    "NumberOfFrames",
    "PhotometricInterpretation",
    "PixelRepresentation",
    "PlanarConfiguration",
)


def _pixel_attrs(ds: Dataset, rng: random.Random, planted: tuple[str, ...]) -> tuple[Dataset, str]:
    keyword = rng.choice(_PIXEL_ATTRIBUTES)
    if keyword == "PhotometricInterpretation":
        value: Any = rng.choice(["RGB", "MONOCHROME1", "PALETTE COLOR", "YBR_FULL_422", "XYZ"])
    elif keyword == "NumberOfFrames":
        value = str(rng.choice([0, 2, 1000, 99999999]))
    else:
        value = rng.choice([0, 1, 3, 7, 24, 65535])
    setattr(ds, keyword, value)
    return ds, f"{keyword} lies"


def _pixel_length(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located:
        return _truncate(data, rng)
    elements, explicit, little = located
    pixels = [e for e in elements if e.tag == 0x7FE00010]
    if not pixels or pixels[0].length == 0xFFFFFFFF:
        return _fragments(data, rng)
    pixel = pixels[0]
    choice = rng.choice(["shorter", "longer", "appended", "halved"])
    if choice == "shorter":
        return _with_length(data, pixel, pixel.length - 2, explicit, little), "Pixel Data length 2 short"
    if choice == "longer":
        return _with_length(data, pixel, pixel.length + 64, explicit, little), "Pixel Data length past the end"
    if choice == "appended":
        extra = TRAILER_TOKEN.encode() * rng.choice([1, 8, 4096])
        return _with_length(data, pixel, pixel.length + len(extra), explicit, little) + extra, "bytes appended"
    half = pixel.length // 2
    return _with_length(data, pixel, half, explicit, little)[: pixel.offset + pixel.header + half], "halved"


def _fragments(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    located = _mutable(data)
    if not located:
        return _flip(data, rng)
    elements, _, _ = located
    pixels = [e for e in elements if e.tag == 0x7FE00010]
    if not pixels or pixels[0].length != 0xFFFFFFFF:
        return _pixel_length(data, rng) if pixels else _flip(data, rng)
    start = pixels[0].offset + pixels[0].header
    items = []  # (offset, length) of each item, the offset table first
    pos = start
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHL", data, pos)
        if (group, element) != (0xFFFE, 0xE000):
            break
        items.append((pos, length))
        pos += 8 + length
    if len(items) < 2:
        return _flip(data, rng)
    choice = rng.choice(["damaged", "resized", "no offset table", "extra", "garbage after"])
    out = bytearray(data)
    at, length = rng.choice(items[1:])
    if choice == "damaged":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(at + 8 + length // 10, at + 8 + max(length * 9 // 10, length // 10 + 1))] ^= (
                rng.randrange(1, 256)
            )
    elif choice == "resized":
        struct.pack_into("<L", out, at + 4, max(length + rng.choice([-9, -1, 1, 9, 1000]), 0))
    elif choice == "no offset table":
        table_at, table_length = items[0]
        del out[table_at : table_at + 8 + table_length]
    elif choice == "extra":
        fragment = bytes(out[at : at + 8 + length])
        out[pos:pos] = fragment
    else:
        out += b"\x01\x02" + TRAILER_TOKEN.encode()
    return bytes(out), f"fragment {choice}"


def _syntax(ds: Dataset, data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """The same data set bytes under another declared transfer syntax."""
    declared = rng.choice(_SYNTAXES)
    meta_end = 132
    while meta_end + 8 <= len(data):
        group, _, vr, length = struct.unpack_from("<HH2sH", data, meta_end)
        if group != 0x0002:
            break
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<L", data, meta_end + 8)
            meta_end += 12 + length
        else:
            meta_end += 8 + length
    file_meta = copy.deepcopy(ds.file_meta)
    file_meta.TransferSyntaxUID = UID(declared)
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, file_meta, enforce_standard=True)
    return data[:132] + buffer.getvalue() + data[meta_end:], f"declared {UID(declared).name or 'an unknown syntax'}"


_BYTE_FAMILIES: dict[str, Callable[[bytes, random.Random], tuple[bytes, str]]] = {
    "flip": _flip,
    "truncate": _truncate,
    "length": _length,
    "swallow": _swallow,
    "vr": _vr,
    "retag": _retag,
    "order": _order,
    "pixel_length": _pixel_length,
    "fragments": _fragments,
}
_DATASET_FAMILIES: dict[str, Callable[[Dataset, random.Random, tuple[str, ...]], tuple[Dataset, str]]] = {
    "nesting": _nesting,
    "huge": _huge,
    "charset": _charset,
    "private": _private,
    "pixel_attrs": _pixel_attrs,
}
FAMILIES = (*_BYTE_FAMILIES, *_DATASET_FAMILIES, "syntax")


def mutate(seed: Seed, family: str, rng: random.Random, n: int) -> Case:
    """Case number `n`: the seed with a SOP Instance UID of its own, mutated by `family`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the values being set, quoting them
        return _mutate(seed, family, rng, n)


def _mutate(seed: Seed, family: str, rng: random.Random, n: int) -> Case:
    ds = with_new_sop_instance_uid(seed.dataset, n)
    if family in _DATASET_FAMILIES:
        ds, what = _DATASET_FAMILIES[family](ds, rng, seed.planted)
        try:
            data = encode(ds)
        except Exception:  # noqa: BLE001 - pydicom will not write this mutation: damage the bytes instead
            data, what = _flip(encode(with_new_sop_instance_uid(seed.dataset, n)), rng)
    elif family == "syntax":
        data, what = _syntax(ds, encode(ds), rng)
    else:
        data, what = _BYTE_FAMILIES[family](encode(ds), rng)
    return Case(seed.name, family, what, data, (*seed.planted, TRAILER_TOKEN))


def cases(seeds: Sequence[Seed], count: int, seed: int = 0) -> Iterator[Case]:
    """`count` cases, families and seeds in turn, reproducible from `seed`."""
    rng = random.Random(seed)
    for n in range(count):
        family = FAMILIES[n % len(FAMILIES)]
        yield mutate(seeds[(n // len(FAMILIES)) % len(seeds)], family, rng, n)


# --- the judge -------------------------------------------------------------------------------------

# Rejections that mean the engine failed, not the input: the run survived, the engine did not.
ENGINE_FAILURES = frozenset({"internal_error", "crashed", "timeout"})
MEMORY_DETAIL = "memory limit"


@dataclass
class Verdict:
    outcome: str  # "published", "rejected:<reason>", or "FAILED"
    problem: str = ""


def judge(line: dict[str, Any], planted: Sequence[str]) -> Verdict:
    """What one report line of a fuzz run says about the engine."""
    status = line["status"]
    if status == "rejected":
        reason = line.get("reason") or ""
        if not reason or not line.get("detail"):
            return Verdict("FAILED", "rejected without a reason")
        if reason in ENGINE_FAILURES or (reason == "too_large" and MEMORY_DETAIL in line["detail"]):
            return Verdict("FAILED", f"{reason}: {line['detail']}")
        leaked = [token for token in planted if token in line["detail"]]
        if leaked:
            return Verdict("FAILED", "a planted token in the rejection detail")
        return Verdict(f"rejected:{reason}")
    output = Path(line["output"]).read_bytes()
    problem = _leak_or_unreadable(output, planted)
    return Verdict("FAILED", problem) if problem else Verdict("published")


def _leak_or_unreadable(output: bytes, planted: Sequence[str]) -> str:
    lowered = output.lower()
    for token in planted:
        if token.encode() in output or token.lower().encode() in lowered:
            return "a planted token in the output bytes"
    try:
        ds = pydicom.dcmread(io.BytesIO(output))
        texts = []
        for element in ds.iterall():
            value = element.value  # every element decodes
            if isinstance(value, bytes | bytearray):
                continue
            texts.append(str(value).lower())
        ds.file_meta  # noqa: B018
    except Exception as exc:  # noqa: BLE001 - the output must read back whole
        return f"pydicom cannot read the output back ({type(exc).__name__})"
    joined = "\n".join(texts)
    for token in planted:
        if token.lower() in joined:
            return "a planted token in a decoded value"
    if "PixelData" in ds:
        try:
            ds.pixel_array  # noqa: B018 - published pixels decode
        except Exception as exc:  # noqa: BLE001
            if "plugin" not in str(exc) or "available" not in str(exc):
                return f"the published pixels do not decode ({type(exc).__name__})"
    return ""


@dataclass
class FuzzReport:
    verdicts: list[tuple[Case, Verdict]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)  # the run's whole report, real files too

    @property
    def failures(self) -> list[tuple[Case, Verdict]]:
        return [(case, verdict) for case, verdict in self.verdicts if verdict.outcome == "FAILED"]

    def by_outcome(self) -> Counter[str]:
        return Counter(verdict.outcome.split(":")[0] for _, verdict in self.verdicts)

    def by_family(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = {}
        for case, verdict in self.verdicts:
            table.setdefault(case.family, Counter())[verdict.outcome.split(":")[0]] += 1
        return table

    def reasons(self) -> Counter[str]:
        return Counter(v.outcome.split(":", 1)[1] for _, v in self.verdicts if v.outcome.startswith("rejected:"))


def run_fuzz(
    fuzz_cases: Sequence[Case],
    folder: Path,
    *,
    rules: Any,
    key: bytes,
    jobs: int = 2,
    timeout_s: float = 60.0,
    memory_bytes: int = 3 * 1024**3,
    others: Sequence[Path] = (),
) -> FuzzReport:
    """Write the cases (and `others`, real files, copied in) into one drop folder, run `deidflow
    deid`'s batch over it, and judge every case's line. Every input must have exactly one line."""

    drop = folder / "drop"
    drop.mkdir(parents=True)
    by_name: dict[str, Case] = {}
    for n, case in enumerate(fuzz_cases):
        name = f"{n:05d}_{case.family}.dcm"
        (drop / name).write_bytes(case.data)
        by_name[name] = case
    for n, path in enumerate(others):
        (drop / f"real_{n:04d}_{path.name}").symlink_to(path)
    report_path = folder / "report.jsonl"
    summary = run_batch(
        [drop],
        folder / "research",
        rules,
        key,
        jobs=jobs,
        report_path=report_path,
        limits=Limits(timeout_s=timeout_s, memory_bytes=memory_bytes),
    )
    lines = [json.loads(line) for line in report_path.read_text().splitlines()]
    inputs = sorted(str(p) for p in drop.iterdir())
    if [line["input"] for line in lines] != inputs or len(summary.lines) != len(inputs):
        raise AssertionError("the run did not write exactly one report line per input, in input order")
    report = FuzzReport(lines=lines)
    for line in lines:
        fuzz_case = by_name.get(Path(line["input"]).name)
        if fuzz_case is None:
            continue  # a real file: it only had to have its line
        report.verdicts.append((fuzz_case, judge(line, fuzz_case.planted)))
    return report


# pydicom's own test files used as seeds: every encoding and kind the engine meets most.
PYDICOM_SEEDS = (
    "CT_small.dcm",  # explicit VR little endian, CT
    "MR_small_implicit.dcm",  # implicit VR
    "MR_small_bigendian.dcm",  # explicit VR big endian (retired)
    "rtplan.dcm",  # deep sequences, implicit VR
    "test-SR.dcm",  # an SR content tree
    "image_dfl.dcm",  # deflated
    "SC_rgb_rle.dcm",  # RLE, a secondary capture: pixels scanned
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, scanned
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS
    "JPEG2000.dcm",  # JPEG 2000
)


def default_seeds() -> list[Seed]:
    """Synthetic PHI-laden instances (a CT, an SR citing it, an ultrasound with a name burned in)
    and pydicom's test files with tokens planted in them."""

    corpus = make_corpus(n_patients=1, studies_per_patient=1, images_per_series=1, with_sr=True, seed=77)
    planted = tuple(value for value in corpus.planted_values() if len(value) >= 6)
    seeds = [Seed(f"synthetic-{i.dataset.Modality}", i.dataset, planted) for i in corpus.instances]
    ultrasound, _, patient_values = make_burned_in_ultrasound(seed=8)
    seeds.append(Seed("synthetic-US", ultrasound, (*patient_values, STAFF["institution"])))
    for name in PYDICOM_SEEDS:
        path = get_testdata_file(name)
        if not path:
            continue
        ds = pydicom.dcmread(path, force=True)
        seeds.append(Seed(name, ds, plant(ds, name.split(".")[0].replace("_", "").replace("-", "")[:10])))
    return seeds
