"""DIMSE status codes (PS3.7 Annex C) and the service-specific ones of PS3.4.

A status is a 16-bit code in (0000,0900) of every response. PS3.7 C.1 sorts
codes into five classes (success, pending, cancel, warning, failure); the
service classes of PS3.4 add their own codes and whole ranges (A7xx "out of
resources", A9xx "does not match SOP class", Cxxx "cannot understand"), so a
code received need not be a member of :class:`Status`: :func:`describe_status`
names any code, and :func:`status_category` classifies any code.
"""

from __future__ import annotations

import enum

__all__ = ["Status", "StatusCategory", "describe_status", "status_category"]


class StatusCategory(enum.Enum):
    """The classes of DIMSE status codes (PS3.7 Annex C)."""

    SUCCESS = "success"
    PENDING = "pending"
    CANCEL = "cancel"
    WARNING = "warning"
    FAILURE = "failure"


class Status(enum.IntEnum):
    """The status codes adicom sends or names (PS3.7 Annex C, PS3.4 service classes).

    ``str(status)`` and :attr:`meaning` give the standard's words, e.g.
    ``Status.MOVE_DESTINATION_UNKNOWN.meaning`` is "Refused: move
    destination unknown".
    """

    SUCCESS = 0x0000
    # Warnings (PS3.7 C.4, N-services).
    OPTIONAL_ATTRIBUTES_NOT_SUPPORTED = 0x0001
    ATTRIBUTE_LIST_ERROR = 0x0107
    ATTRIBUTE_VALUE_OUT_OF_RANGE = 0x0116
    # Failures of PS3.7 C.5 (mostly DIMSE-N).
    NO_SUCH_ATTRIBUTE = 0x0105
    INVALID_ATTRIBUTE_VALUE = 0x0106
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_INSTANCE = 0x0112
    NO_SUCH_EVENT_TYPE = 0x0113
    NO_SUCH_ARGUMENT = 0x0114
    INVALID_ARGUMENT_VALUE = 0x0115
    INVALID_SOP_INSTANCE = 0x0117
    NO_SUCH_SOP_CLASS = 0x0118
    CLASS_INSTANCE_CONFLICT = 0x0119
    MISSING_ATTRIBUTE = 0x0120
    MISSING_ATTRIBUTE_VALUE = 0x0121
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    NO_SUCH_ACTION_TYPE = 0x0123
    NOT_AUTHORIZED = 0x0124
    DUPLICATE_INVOCATION = 0x0210
    UNRECOGNIZED_OPERATION = 0x0211
    MISTYPED_ARGUMENT = 0x0212
    RESOURCE_LIMITATION = 0x0213
    # Storage and query/retrieve (PS3.4 B.2.3, C.4.1.1.4, C.4.2.1.5, C.4.3.1.4).
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_MATCHES = 0xA701
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH = 0xA900
    SUB_OPERATIONS_WARNING = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH = 0xB007
    CANNOT_UNDERSTAND = 0xC000
    CANCEL = 0xFE00
    PENDING = 0xFF00
    PENDING_OPTIONAL_KEYS = 0xFF01

    @property
    def meaning(self) -> str:
        """The standard's words for this code."""
        return _MEANINGS[self]

    @property
    def category(self) -> StatusCategory:
        """The class of this code (PS3.7 Annex C)."""
        return status_category(self)

    def __str__(self) -> str:
        return f"0x{self.value:04X} ({self.meaning})"


_MEANINGS: dict[int, str] = {
    Status.SUCCESS: "Success",
    Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED: (
        "Warning: requested optional attributes are not supported"
    ),
    Status.ATTRIBUTE_LIST_ERROR: "Warning: attribute list error",
    Status.ATTRIBUTE_VALUE_OUT_OF_RANGE: "Warning: attribute value out of range",
    Status.NO_SUCH_ATTRIBUTE: "Failure: no such attribute",
    Status.INVALID_ATTRIBUTE_VALUE: "Failure: invalid attribute value",
    Status.PROCESSING_FAILURE: "Failure: processing failure",
    Status.DUPLICATE_SOP_INSTANCE: "Failure: duplicate SOP instance",
    Status.NO_SUCH_SOP_INSTANCE: "Failure: no such SOP instance",
    Status.NO_SUCH_EVENT_TYPE: "Failure: no such event type",
    Status.NO_SUCH_ARGUMENT: "Failure: no such argument",
    Status.INVALID_ARGUMENT_VALUE: "Failure: invalid argument value",
    Status.INVALID_SOP_INSTANCE: "Failure: invalid SOP instance",
    Status.NO_SUCH_SOP_CLASS: "Failure: no such SOP class",
    Status.CLASS_INSTANCE_CONFLICT: "Failure: class-instance conflict",
    Status.MISSING_ATTRIBUTE: "Failure: missing attribute",
    Status.MISSING_ATTRIBUTE_VALUE: "Failure: missing attribute value",
    Status.SOP_CLASS_NOT_SUPPORTED: "Refused: SOP class not supported",
    Status.NO_SUCH_ACTION_TYPE: "Failure: no such action type",
    Status.NOT_AUTHORIZED: "Refused: not authorized",
    Status.DUPLICATE_INVOCATION: "Failure: duplicate invocation",
    Status.UNRECOGNIZED_OPERATION: "Failure: unrecognized operation",
    Status.MISTYPED_ARGUMENT: "Failure: mistyped argument",
    Status.RESOURCE_LIMITATION: "Failure: resource limitation",
    Status.OUT_OF_RESOURCES: "Refused: out of resources",
    Status.OUT_OF_RESOURCES_MATCHES: (
        "Refused: out of resources, unable to calculate number of matches"
    ),
    Status.OUT_OF_RESOURCES_SUB_OPERATIONS: (
        "Refused: out of resources, unable to perform sub-operations"
    ),
    Status.MOVE_DESTINATION_UNKNOWN: "Refused: move destination unknown",
    Status.IDENTIFIER_DOES_NOT_MATCH: "Error: data set or identifier does not match SOP class",
    Status.SUB_OPERATIONS_WARNING: (
        "Warning: coercion of data elements, or sub-operations completed with failures"
    ),
    Status.ELEMENTS_DISCARDED: "Warning: elements discarded",
    Status.DATASET_DOES_NOT_MATCH: "Warning: data set does not match SOP class",
    Status.CANNOT_UNDERSTAND: "Error: cannot understand, or unable to process",
    Status.CANCEL: "Cancel: operation terminated by cancel request",
    Status.PENDING: "Pending",
    Status.PENDING_OPTIONAL_KEYS: "Pending: optional keys not supported",
}

_WARNING_CODES = frozenset(
    {
        Status.OPTIONAL_ATTRIBUTES_NOT_SUPPORTED,
        Status.ATTRIBUTE_LIST_ERROR,
        Status.ATTRIBUTE_VALUE_OUT_OF_RANGE,
    }
)


def status_category(status: int) -> StatusCategory:
    """Classify any DIMSE status code (PS3.7 C.1 to C.5; PS3.4's Bxxx warnings).

    A code the standard does not classify counts as a failure.
    """
    if status == 0x0000:
        return _SUCCESS
    if status == 0xFF00 or status == 0xFF01:
        return _PENDING
    if status == 0xFE00:
        return _CANCEL
    if status in _WARNING_CODES or 0xB000 <= status <= 0xBFFF:
        return _WARNING
    return _FAILURE


# The categories as plain names (called per response: an Enum member read
# through its class costs a descriptor call on Python 3.11).
_SUCCESS, _PENDING, _CANCEL = StatusCategory.SUCCESS, StatusCategory.PENDING, StatusCategory.CANCEL
_WARNING, _FAILURE = StatusCategory.WARNING, StatusCategory.FAILURE


def describe_status(status: int) -> str:
    """Name any DIMSE status code in the words of PS3.4 and PS3.7."""
    name = _MEANINGS.get(status)
    if name is not None:
        return name
    high = status & 0xFF00
    if high == 0xA700:
        return _MEANINGS[Status.OUT_OF_RESOURCES]
    if high == 0xA900:
        return _MEANINGS[Status.IDENTIFIER_DOES_NOT_MATCH]
    if status & 0xF000 == 0xC000:
        return _MEANINGS[Status.CANNOT_UNDERSTAND]
    category = status_category(status)
    return f"{category.value.capitalize()}: status 0x{status:04X}"
