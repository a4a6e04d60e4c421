"""Editing a data set below pydicom's keyword machinery: values written back as raw bytes, elements
put in place without Dataset.__setitem__'s checks where they cannot apply.

Why: setting a value through pydicom converts it and looks up the keyword and dictionary VR each
time, which was the costliest part of the header pass. Each shortcut here does exactly what the
public way does (a test runs the pass both ways on every kind of input and compares the bytes and
the data sets): `public_setters()` switches every one of them to the public way.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import cast

from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from ..tags import ASCII_VRS, BINARY_VRS
from .read import PLAIN_TEXT_VRS, plain_text

_public = False


@contextmanager
def public_setters() -> Iterator[None]:
    """Within this block every edit goes through pydicom's public setters (the reference the
    shortcuts are tested against)."""
    global _public
    before, _public = _public, True
    try:
        yield
    finally:
        _public = before


class ElementValue:
    """One element's value as a list of strings.

    Explicit-VR raw elements are never decoded unless their value is needed, and are written back as
    raw bytes whenever the new value is ASCII (pseudonyms, UIDs, dates, dummies always are); ASCII-only
    VRs are even read straight from the bytes. Everything else goes through pydicom.
    """

    __slots__ = ("_texts", "ds", "raw", "tag", "vr")

    def __init__(self, ds: Dataset, tag: int, vr: str, raw: object):
        self.ds, self.tag, self.vr = ds, tag, vr
        usable = type(raw) is RawDataElement and vr == raw.VR and vr not in BINARY_VRS
        self.raw: RawDataElement | None = raw if usable else None  # type: ignore[assignment]
        self._texts: list[str] | None = None

    @property
    def texts(self) -> list[str]:
        if self._texts is None:
            self._texts = self._read_texts()
        return self._texts

    def _read_texts(self) -> list[str]:
        if self.raw is not None:
            data = self.raw.value or b""
            if self.vr in ASCII_VRS:
                return [t.strip("\0 ") for t in data.decode("latin-1").split("\\")] if data.strip(b"\0 ") else []
            plain = plain_text(data) if self.vr in PLAIN_TEXT_VRS else None
            if plain is not None:
                return [plain] if plain else []
        value = self.ds[self.tag].value
        if value is None or value == "" or value == b"":
            return []
        if isinstance(value, bytes):
            return ["<binary>"]
        if isinstance(value, (list, MultiValue)):
            return [str(v) for v in value]
        return [str(value)]

    @property
    def is_empty(self) -> bool:
        if self.raw is not None and self._texts is None:
            return not (self.raw.value or b"").strip(b"\0 ")
        return not any(self.texts)

    def set(self, texts: list[str]) -> None:
        if self.raw is not None and all(t.isascii() for t in texts):
            data = "\\".join(texts).encode("ascii")
            if len(data) % 2:
                data += b"\0" if self.vr == "UI" else b" "
            self._put_raw(self.raw._replace(length=len(data), value=data))
        else:
            self.ds[self.tag].value = texts if len(texts) > 1 else texts[0]

    def _put_raw(self, raw: RawDataElement) -> None:
        """`ds[tag] = raw`. For a public element that is all Dataset.__setitem__ does (the tag is
        already a key, the element is neither Pixel Data nor a sequence), so it is done directly;
        a private one goes through pydicom, which ties it to its creator."""
        if _public or (self.tag >> 16) % 2:
            self.ds[self.tag] = raw
        else:
            self.ds._dict[self.tag] = raw  # type: ignore[index]  # a pydicom tag is an int: hashes alike

    def set_dummy(self, dummy: str | int) -> None:
        if isinstance(dummy, str):
            self.set([dummy])
        else:
            self.ds[self.tag].value = dummy

    def clear(self) -> None:
        if self.raw is not None:
            self._put_raw(self.raw._replace(length=0, value=b""))
        else:
            self.ds[self.tag].value = b"" if self.vr in BINARY_VRS else None


def set_element(ds: Dataset, tag: int, vr: str, value: object) -> None:
    """Dataset.__setattr__ for a keyword whose tag and dictionary VR are given: a new element, or
    for one the data set has already with the same VR, a new element in its place (what setting
    the value of a decoded element amounts to). A sequence, or one with another VR, keeps its
    element (VR, undefined length) and takes the value."""
    if _public:
        setattr(ds, keyword_for_tag(tag), value)
        return
    existing = _elements(ds).get(tag)
    if existing is not None and (vr == "SQ" or vr != existing.VR):
        element = ds[tag]
        element.value = value
        ds[tag] = element
    elif vr == "SQ":
        ds[tag] = DataElement(tag, vr, value)  # Dataset.__setitem__ also hands Pixel Representation down
    else:
        element = DataElement(tag, vr, value)
        ds._dict[BaseTag(tag)] = element  # a public, non-pixel element: all Dataset.__setitem__ does


def relabel(ds: Dataset, tag: int, raw: RawDataElement, vr: str) -> RawDataElement:
    """`raw`, still undecoded, as an element of `vr`, in place of the one the data set holds."""
    relabelled = raw._replace(VR=vr)
    ds._dict[BaseTag(tag)] = relabelled
    return relabelled


def copy_as_read(target: Dataset, source: Dataset, tags: tuple[int, ...]) -> None:
    """The elements `tags` of `source`, as they are held (raw ones stay undecoded), into `target`."""
    for tag in tags:
        element = _elements(source).get(tag)
        if element is not None:
            target._dict[BaseTag(tag)] = element


def _elements(ds: Dataset) -> MutableMapping[int, DataElement | RawDataElement]:
    """The data set's own element mapping (its keys are pydicom tags, which are ints)."""
    return cast("MutableMapping[int, DataElement | RawDataElement]", ds._dict)
