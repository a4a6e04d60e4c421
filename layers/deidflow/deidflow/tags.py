"""The DICOM facts the engine shares, each once: how tags are named, the dictionary's VRs, the VR
groups (from pydicom where it has them), the special tags and lengths, the native syntaxes."""

from __future__ import annotations

from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import BYTES_VR, CUSTOMIZABLE_CHARSET_VR, DEFAULT_CHARSET_VR, EXPLICIT_VR_LENGTH_32, STANDARD_VR

UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1: a sequence or item that ends with a delimiter

# -- value representations ------------------------------------------------------------------------
STANDARD_VRS = frozenset(str(vr) for vr in STANDARD_VR)
BINARY_VRS = frozenset(str(vr) for vr in BYTES_VR)  # OB OD OF OL OV OW UN
TEXT_VRS = frozenset(str(vr) for vr in CUSTOMIZABLE_CHARSET_VR)  # the ones the character set applies to
# Bytes that are ASCII whatever the character set, and split on backslashes (UR holds one URI).
ASCII_VRS = frozenset(str(vr) for vr in DEFAULT_CHARSET_VR) - {"UR"}
LONG_LENGTH_VRS = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)  # explicit VR: 2 reserved bytes, 32-bit length
NUMERIC_VRS = frozenset({"FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})  # binary numbers
DATE_VRS = frozenset({"DA", "DT", "TM"})

# -- transfer syntaxes ----------------------------------------------------------------------------
# The native (not encapsulated) ones; the first three are those deidflow writes.
WRITABLE_NATIVE_SYNTAXES = {
    str(ImplicitVRLittleEndian): "Implicit VR Little Endian",
    str(ExplicitVRLittleEndian): "Explicit VR Little Endian",
    str(DeflatedExplicitVRLittleEndian): "Deflated Explicit VR Little Endian",
}
NATIVE_SYNTAXES = frozenset({*WRITABLE_NATIVE_SYNTAXES, str(ExplicitVRBigEndian)})

# -- particular elements --------------------------------------------------------------------------
PIXEL_DATA = 0x7FE00010
PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def tag_text(tag: int) -> str:
    """(gggg,eeee), as the standard writes tags: what logs and reports may name instead of values."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def is_overlay_group(tag: int) -> bool:
    """An element of an overlay's repeating group (60xx, xx even, PS3.3 C.9)."""
    group = tag >> 16
    return 0x6000 <= group <= 0x601E and group % 2 == 0


_KEYWORDS: dict[int, str] = {}


def keyword(tag: int) -> str:
    """The dictionary keyword of a tag, "" for one it does not know (private ones among them)."""
    tag = int(tag)  # a pydicom tag would compare in Python on every hit of the cache
    found = _KEYWORDS.get(tag)
    if found is None:
        found = _KEYWORDS[tag] = keyword_for_tag(tag) or ""
    return found


_DICTIONARY_VRS: dict[int, tuple[str, ...]] = {}


def dictionary_vrs(tag: int) -> tuple[str, ...]:
    """The VRs the dictionary allows for a public tag ("US or SS" -> both), () when it has none."""
    allowed = _DICTIONARY_VRS.get(tag)
    if allowed is None:
        try:
            vr = dictionary_VR(tag) if (tag >> 16) % 2 == 0 else ""
        except KeyError:
            vr = ""
        allowed = _DICTIONARY_VRS[tag] = tuple(v for v in vr.split(" or ") if v and v != "NONE")
    return allowed


def in_dictionary(tag: int) -> bool:
    try:
        dictionary_VR(tag)
    except KeyError:
        return False
    return True


def _times_for_dates() -> dict[int, int]:
    """Each date attribute whose time attribute is named alike (Study Date -> Study Time)."""
    pairs: dict[int, int] = {}
    for tag, entry in DicomDictionary.items():
        vr, name = entry[0], entry[4]
        if vr == "DA" and name.endswith("Date"):
            time_tag = tag_for_keyword(name[:-4] + "Time")
            if time_tag is not None and DicomDictionary[time_tag][0] == "TM":
                pairs[tag] = time_tag
    return pairs


TIME_FOR_DATE = _times_for_dates()
