"""Hypothesis strategies for the upper layer PDUs (PS3.8 9.3) and DIMSE commands.

Values are drawn only from what survives a decode unchanged: AE titles and
the implementation version name have no leading or trailing spaces (they are
stripped on receipt), UIDs have no trailing NUL or space (likewise).
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

from adicom import dimse, pdu

__all__ = [
    "KNOWN_COMMAND_ELEMENTS",
    "STANDARD_SUB_ITEM_TYPES",
    "a_abort",
    "a_associate_ac",
    "a_associate_rj",
    "a_associate_rq",
    "a_release_rp",
    "a_release_rq",
    "ae_titles",
    "any_pdu",
    "async_operations_windows",
    "commands",
    "common_extended",
    "lo_texts",
    "p_data_tf",
    "pdvs",
    "presentation_contexts_ac",
    "presentation_contexts_rq",
    "role_selections",
    "sop_class_extended",
    "uids",
    "unknown_sub_items",
    "user_identities_ac",
    "user_identities_rq",
    "user_information",
    "version_names",
]

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)

#: UIDs: digits and dots, 1 to 64 characters (PS3.5 9.1).
uids = st.text(alphabet="0123456789.", min_size=1, max_size=64)

# The default character repertoire without backslash and control characters.
_PRINTABLE = "".join(c for c in string.printable[:95] if c != "\\")
_NO_SPACE = _PRINTABLE.replace(" ", "")


def _trimmed_text(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    """Printable ASCII without backslash, no leading or trailing space."""
    if max_size == 1:
        return st.text(alphabet=_NO_SPACE, min_size=min_size, max_size=1)
    inner = st.text(alphabet=_PRINTABLE, max_size=max_size - 2)
    two_or_more = st.builds(
        lambda a, mid, b: a + mid + b,
        st.sampled_from(_NO_SPACE),
        inner,
        st.sampled_from(_NO_SPACE),
    )
    short = st.text(alphabet=_NO_SPACE, min_size=min_size, max_size=1)
    return st.one_of(short, two_or_more)


#: AE titles: 1 to 16 characters, significant characters only (PS3.5 6.2).
ae_titles = _trimmed_text(1, 16)
#: Implementation version names: like AE titles (PS3.7 D.3.3.2.3).
version_names = _trimmed_text(1, 16)
#: LO values as carried in Error Comment (0000,0902).
lo_texts = st.one_of(st.just(""), _trimmed_text(1, 64))

#: Item and sub-item types PS3.8 and PS3.7 use; unknown sub-items avoid them.
STANDARD_SUB_ITEM_TYPES = frozenset({0x10, 0x20, 0x21, 0x30, 0x40, *range(0x50, 0x60)})

# ---------------------------------------------------------------------------
# User information sub-items

async_operations_windows = st.builds(pdu.AsyncOperationsWindow, u16, u16)
role_selections = st.builds(pdu.RoleSelection, uids, st.booleans(), st.booleans())
sop_class_extended = st.builds(pdu.SOPClassExtendedNegotiation, uids, st.binary(max_size=64))
common_extended = st.builds(
    pdu.SOPClassCommonExtendedNegotiation,
    uids,
    uids,
    st.lists(uids, max_size=3).map(tuple),
)
user_identities_rq = st.builds(
    pdu.UserIdentityRQ,
    u8,
    st.binary(max_size=64),
    st.binary(max_size=64),
    st.booleans(),
)
user_identities_ac = st.builds(pdu.UserIdentityAC, st.binary(max_size=64))
unknown_sub_items = st.builds(
    pdu.UnknownSubItem,
    u8.filter(lambda t: t not in STANDARD_SUB_ITEM_TYPES),
    st.binary(max_size=64),
)


def _tuples(strategy: st.SearchStrategy[object], n: int) -> st.SearchStrategy[tuple[object, ...]]:
    return st.lists(strategy, max_size=n).map(tuple)


user_information = st.builds(
    pdu.UserInformation,
    maximum_length=u32,
    implementation_class_uid=uids,
    implementation_version_name=st.none() | version_names,
    async_operations_window=st.none() | async_operations_windows,
    role_selections=_tuples(role_selections, 3),
    sop_class_extended=_tuples(sop_class_extended, 3),
    sop_class_common_extended=_tuples(common_extended, 2),
    user_identity_rq=st.none() | user_identities_rq,
    user_identity_ac=st.none() | user_identities_ac,
    unknown=_tuples(unknown_sub_items, 3),
)

# ---------------------------------------------------------------------------
# Presentation context items

odd_context_ids = st.integers(0, 127).map(lambda n: 2 * n + 1)

presentation_contexts_rq = st.builds(
    pdu.PresentationContextRQ,
    odd_context_ids,
    uids,
    st.lists(uids, max_size=4).map(tuple),
)
presentation_contexts_ac = st.builds(
    pdu.PresentationContextAC,
    odd_context_ids,
    st.integers(0, 4),
    st.just("") | uids,
)

# ---------------------------------------------------------------------------
# The PDUs

a_associate_rq = st.builds(
    pdu.AAssociateRQ,
    called_ae=ae_titles,
    calling_ae=ae_titles,
    user_information=user_information,
    application_context=st.just(pdu.APPLICATION_CONTEXT) | uids,
    protocol_version=u16,
    presentation_contexts=_tuples(presentation_contexts_rq, 4),
)
a_associate_ac = st.builds(
    pdu.AAssociateAC,
    called_ae=ae_titles,
    calling_ae=ae_titles,
    user_information=user_information,
    application_context=st.just(pdu.APPLICATION_CONTEXT) | uids,
    protocol_version=u16,
    presentation_contexts=_tuples(presentation_contexts_ac, 4),
)
a_associate_rj = st.builds(pdu.AAssociateRJ, u8, u8, u8)

#: PDVs; some are over 1 KiB so encode_pdata's no-copy branch is taken.
pdvs = st.builds(
    pdu.PDV,
    st.integers(1, 255),
    st.booleans(),
    st.booleans(),
    st.binary(max_size=64) | st.binary(min_size=1000, max_size=2100),
)
p_data_tf = st.builds(pdu.PDataTF, st.lists(pdvs, min_size=1, max_size=4).map(tuple))
a_release_rq = st.just(pdu.AReleaseRQ())
a_release_rp = st.just(pdu.AReleaseRP())
a_abort = st.builds(pdu.AAbort, u8, u8)

any_pdu = st.one_of(
    a_associate_rq,
    a_associate_ac,
    a_associate_rj,
    p_data_tf,
    a_release_rq,
    a_release_rp,
    a_abort,
)

# ---------------------------------------------------------------------------
# DIMSE commands

#: Group 0000 elements Command names (plus the group length); ``other`` avoids them.
KNOWN_COMMAND_ELEMENTS = frozenset(
    {
        0x0000,
        0x0002,
        0x0003,
        0x0100,
        0x0110,
        0x0120,
        0x0600,
        0x0700,
        0x0800,
        0x0900,
        0x0901,
        0x0902,
        0x0903,
        0x1000,
        0x1001,
        0x1002,
        0x1005,
        0x1008,
        0x1020,
        0x1021,
        0x1022,
        0x1023,
        0x1030,
        0x1031,
    }
)

_other_elements = st.lists(
    st.tuples(
        u16.filter(lambda e: e not in KNOWN_COMMAND_ELEMENTS),
        st.binary(max_size=32),
    ),
    max_size=4,
    unique_by=lambda pair: pair[0],
).map(lambda pairs: tuple(sorted(pairs)))


def _opt(strategy: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | strategy


commands = st.builds(
    dimse.Command,
    command_field=st.sampled_from(list(dimse.CommandField)).map(int) | u16,
    message_id=_opt(u16),
    message_id_being_responded_to=_opt(u16),
    affected_sop_class_uid=_opt(uids),
    requested_sop_class_uid=_opt(uids),
    affected_sop_instance_uid=_opt(uids),
    requested_sop_instance_uid=_opt(uids),
    priority=_opt(st.sampled_from(list(dimse.Priority)).map(int)),
    command_data_set_type=st.just(dimse.NO_DATASET) | u16,
    status=_opt(u16),
    offending_element=_opt(st.lists(u32, max_size=3).map(tuple)),
    error_comment=_opt(lo_texts),
    error_id=_opt(u16),
    move_destination=_opt(ae_titles),
    move_originator_ae_title=_opt(ae_titles),
    move_originator_message_id=_opt(u16),
    number_of_remaining_suboperations=_opt(u16),
    number_of_completed_suboperations=_opt(u16),
    number_of_failed_suboperations=_opt(u16),
    number_of_warning_suboperations=_opt(u16),
    event_type_id=_opt(u16),
    attribute_identifier_list=_opt(st.lists(u32, max_size=3).map(tuple)),
    action_type_id=_opt(u16),
    other=_other_elements,
)
