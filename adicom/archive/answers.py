"""C-FIND answers of the archive, and the index rows of files found in its folder.

Split from :mod:`adicom.archive` (the archive's store and commit paths stay
there): what a query's identifier asks for, the answer elements filled from
an index row (the non-ASCII values as they were received), and the row of a
file read from disk when the folder is scanned.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from adicom.archive.matching import ATTRIBUTES, LEVELS, RAW, make_row
from adicom.dimse import Status
from adicom.qrscp import QRContext, QueryFailed

log = logging.getLogger("adicom")


#: One element of a C-FIND answer: (tag, VR, index keyword, fixed text).
#: With a keyword, the value comes from the match; without, it is the text.
AnswerElement = tuple[int, str, str, str]


def index_file(path: Path, mtime_ns: int, size: int) -> list[str | int] | None:
    """The index row of a file already in the folder, None if it is no instance."""
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:
        log.debug("not indexed (not DICOM): %s", path)
        return None
    raw = _raw_text(dataset)  # before the values decode them
    values = {keyword: _text(dataset.get(keyword)) for keyword in ATTRIBUTES}
    values["SpecificCharacterSet"] = _text(dataset.get("SpecificCharacterSet"))
    if not values["SOPInstanceUID"]:
        return None
    transfer = (
        str(getattr(dataset.file_meta, "TransferSyntaxUID", ""))
        if hasattr(dataset, "file_meta")
        else ""
    )
    return make_row(values, path, transfer, mtime_ns, size, raw)


def answer_template(identifier: Dataset, level: str) -> list[AnswerElement]:
    """The elements of every answer to ``identifier``, in tag order.

    The keys asked for, each filled from the match or returned empty when
    the index cannot fill it (PS3.4 C.2.2.1.2), the level, the character
    set as asked, and the level's unique key even if it was not asked for.
    """
    template: list[AnswerElement] = []
    for element in identifier:
        keyword = element.keyword
        if keyword == "QueryRetrieveLevel":
            continue
        if keyword == "SpecificCharacterSet":
            template.append((element.tag, "CS", "", _text(element.value)))
        else:
            # An unknown or private key has no keyword: it is returned empty.
            template.append((element.tag, element.VR, keyword, ""))
    template.append((0x00080052, "CS", "", level))
    unique = LEVELS[level]
    unique_tag = tag_for_keyword(unique)
    assert unique_tag is not None
    if all(tag != unique_tag for tag, *_ in template):
        template.append((unique_tag, "UI", unique, ""))
    template.sort()
    return template


def answer_elements(
    template: list[AnswerElement], found: dict[str, str]
) -> list[tuple[int, str, str | bytes]]:
    """The answer's (tag, VR, value) elements for one match.

    Values that are not plain ASCII go back as they were received, with
    the match's own Specific Character Set (PS3.5 6.1, PS3.4 C.4.1.1.3.1:
    an SCP answers in the character set of what it holds).
    """
    raw: dict[str, str] = json.loads(found[RAW]) if found.get(RAW) else {}
    elements: list[tuple[int, str, str | bytes]] = []
    charset_seen = False
    for tag, vr, keyword, text in template:
        if tag == 0x00080005:
            charset_seen = True
            elements.append((tag, vr, found.get("SpecificCharacterSet") or text))
        elif keyword in raw:
            elements.append((tag, vr, raw[keyword].encode("latin-1")))
        else:
            elements.append((tag, vr, (found.get(keyword) or "") if keyword else text))
    if not charset_seen and raw:
        elements.insert(0, (0x00080005, "CS", found.get("SpecificCharacterSet", "")))
    return elements


def answer_dataset(elements: list[tuple[int, str, str | bytes]]) -> Dataset:
    """A match as a pydicom Dataset: for what the quick encoder does not take."""
    answer = Dataset()
    charset = next((v for tag, _, v in elements if tag == 0x00080005), "")
    encodings = _python_codecs(charset if isinstance(charset, str) else "")
    for tag, vr, value in elements:
        if isinstance(value, bytes):
            value = decode_bytes(value, encodings, {0x5E, 0x3D})
        answer[tag] = pydicom.DataElement(tag, vr, _value(vr, value) if value else None)
    return answer


def _python_codecs(charset: str) -> list[str]:
    return list(convert_encodings([c.strip() for c in charset.split("\\")] or None))


class MissingInstance(Dataset):
    """A stand-in for an indexed file that is gone: it fails to send, by its UID."""

    def __init__(self, sop_instance_uid: str) -> None:
        super().__init__()
        self.SOPInstanceUID = sop_instance_uid


def _raw_text(dataset: Dataset) -> dict[str, bytes]:
    """The indexed text values that are not plain ASCII, as the file has them."""
    raw: dict[str, bytes] = {}
    for keyword in ATTRIBUTES:
        tag = tag_for_keyword(keyword)
        element = dataset.get_item(tag) if tag is not None else None
        value = getattr(element, "value", None)
        if isinstance(value, bytes) and value and (not value.isascii() or b"\x1b" in value):
            raw[keyword] = value.rstrip(b" \0")
    return raw


def patient_root(context: QRContext) -> bool:
    """Whether the context is one of Patient Root Q/R Find, Move, Get (PS3.4 C.6.1)."""
    return context.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.2.1.")


def _text(element: Any) -> str:
    if element is None or element == "":
        return ""
    if isinstance(element, list | tuple) or type(element).__name__ == "MultiValue":
        return "\\".join(str(v) for v in element)
    return str(element)


def _value(vr: str, text: str) -> Any:
    if "\\" in text and vr not in ("PN",):
        return text.split("\\")
    return text


def identifier_keys(identifier: Dataset) -> tuple[str, dict[str, str]]:
    """The Query/Retrieve Level and the text of each key to match against the index.

    Sequence keys are left out (they are matched against the files); an
    unsupported level is answered with 0xA900 (QueryFailed).
    """
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise QueryFailed(
            Status.IDENTIFIER_DOES_NOT_MATCH, f"Query/Retrieve Level {level!r} is not supported"
        )
    keys: dict[str, str] = {}
    for element in identifier:
        keyword = element.keyword
        if not keyword or keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        if element.VR == "SQ":
            continue  # matched against the files (SequenceKeys)
        keys[keyword] = _text(element.value)
    return level, keys
