"""Association negotiation as pure functions: the request, the answer, what both agreed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest
from pydicom.uid import UID

from adicom.negotiation import (
    MIN_PEER_MAX_PDU,
    AcceptorPolicy,
    Agreement,
    build_request,
    negotiate,
    requestor_agreement,
)
from adicom.pdu import (
    AAssociateAC,
    AAssociateRJ,
    AAssociateRQ,
    AsyncOperationsWindow,
    RoleSelection,
    UserIdentityAC,
    UserIdentityRQ,
)
from adicom.presentation import CT_IMAGE_STORAGE, STORAGE_SOP_CLASSES, VERIFICATION

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
GET = "1.2.840.10008.5.1.4.1.2.2.3"

POLICY = AcceptorPolicy(
    ae_title="SCP",
    supported={VERIFICATION: (EXPLICIT, IMPLICIT), CT_IMAGE_STORAGE: (EXPLICIT, IMPLICIT)},
    async_window=8,
)


def request(
    *,
    called_ae: str = "SCP",
    contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (IMPLICIT, EXPLICIT)),),
    roles: Sequence[RoleSelection] = (),
    user_identity: UserIdentityRQ | None = None,
    max_pdu: int = 16384,
    async_window: int = 16,
) -> AAssociateRQ:
    return build_request(
        calling_ae="SCU",
        called_ae=called_ae,
        contexts=contexts,
        roles=roles,
        user_identity=user_identity,
        max_pdu=max_pdu,
        async_window=async_window,
    )


def accepted(
    answer: tuple[AAssociateAC, Agreement] | AAssociateRJ,
) -> tuple[AAssociateAC, Agreement]:
    assert not isinstance(answer, AAssociateRJ), answer
    return answer


def test_the_acceptor_chooses_by_its_own_preference() -> None:
    rq = request()
    response, agreement = accepted(negotiate(rq, POLICY))
    (context,) = response.presentation_contexts
    assert (context.result, context.transfer_syntax) == (0, EXPLICIT)
    assert agreement.contexts[1].transfer_syntax == EXPLICIT
    assert agreement.peer_max_pdu == rq.user_information.maximum_length


@pytest.mark.parametrize(
    ("options", "policy", "expected"),
    [
        ({"called_ae": "OTHER"}, POLICY, AAssociateRJ(1, 1, 7)),
        ({}, replace(POLICY, allowed_calling_aes={"MODALITY"}), AAssociateRJ(1, 1, 3)),
        ({"contexts": [("1.2.3.4", [IMPLICIT])]}, POLICY, AAssociateRJ(1, 1, 1)),
        ({"max_pdu": MIN_PEER_MAX_PDU - 1}, POLICY, AAssociateRJ(1, 1, 1)),
    ],
    ids=["called-ae", "calling-ae", "no-context", "tiny-max-pdu"],
)
def test_rejections_carry_the_standards_reasons(
    options: dict[str, Any], policy: AcceptorPolicy, expected: AAssociateRJ
) -> None:
    assert negotiate(request(**options), policy) == expected


def test_a_wrong_application_context_is_rejected() -> None:
    rq = replace(request(), application_context="1.2.3")
    assert negotiate(rq, POLICY) == AAssociateRJ(1, 1, 2)


def test_a_maximum_pdu_of_zero_means_no_limit_and_is_accepted() -> None:
    _, agreement = accepted(negotiate(request(max_pdu=0), POLICY))
    assert agreement.peer_max_pdu == 0


def test_the_window_is_agreed_down_and_mirrored_for_the_requestor() -> None:
    rq = request(async_window=16)
    response, acceptor = accepted(negotiate(rq, POLICY))
    assert response.user_information.async_operations_window == AsyncOperationsWindow(8, 8)
    assert (acceptor.max_incoming, acceptor.max_outstanding) == (8, 8)
    requestor = requestor_agreement(rq, response, 16)
    assert (requestor.max_outstanding, requestor.max_incoming) == (8, 8)


def test_no_window_proposed_no_window_answered() -> None:
    rq = request(async_window=1)
    response, agreement = accepted(negotiate(rq, POLICY))
    assert response.user_information.async_operations_window is None
    assert (agreement.max_outstanding, agreement.max_incoming) == (1, 1)


def test_the_scp_role_is_given_only_for_storage_classes_of_a_c_get_scp() -> None:
    roles = (RoleSelection(CT_IMAGE_STORAGE, True, True), RoleSelection(VERIFICATION, True, True))
    rq = request(
        contexts=[(VERIFICATION, [IMPLICIT]), (CT_IMAGE_STORAGE, [IMPLICIT, EXPLICIT])],
        roles=roles,
    )
    response, agreement = accepted(negotiate(rq, replace(POLICY, get_scp_role=True)))
    assert set(response.user_information.role_selections) == {
        RoleSelection(CT_IMAGE_STORAGE, True, True),
        RoleSelection(VERIFICATION, True, False),
    }
    # With the SCP role, the requestor's order of syntaxes wins (it receives).
    assert agreement.contexts[3].transfer_syntax == IMPLICIT and agreement.contexts[3].scp_role
    assert not agreement.contexts[1].scp_role
    # A server that serves no C-GET gives no SCP role.
    _, plain = accepted(negotiate(rq, POLICY))
    assert not plain.contexts[3].scp_role


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CSA_NON_IMAGE = "1.3.12.2.1107.5.9.1"  # Siemens, private
STORAGE_POLICY = AcceptorPolicy(
    ae_title="SCP",
    supported={VERIFICATION: (EXPLICIT, IMPLICIT)},
    storage=(EXPLICIT, IMPLICIT, JPEG_BASELINE),
)


def test_a_storage_scp_takes_the_requestors_first_syntax_it_can_keep() -> None:
    # storescu -xw +C: the file's syntax first, the uncompressed ones after,
    # in one context. The SCP must keep the instance as sent (PS3.4 B.2).
    rq = request(contexts=[(CT_IMAGE_STORAGE, [JPEG_BASELINE, EXPLICIT, IMPLICIT])])
    _, agreement = accepted(negotiate(rq, STORAGE_POLICY))
    assert agreement.contexts[1].transfer_syntax == JPEG_BASELINE
    # ... unless the SCP prefers its own order.
    mine = replace(STORAGE_POLICY, prefer_requestor_syntax=False)
    _, ours = accepted(negotiate(rq, mine))
    assert ours.contexts[1].transfer_syntax == EXPLICIT


def test_any_storage_class_is_taken_private_ones_too_unless_restricted() -> None:
    rq = request(contexts=[(CSA_NON_IMAGE, [EXPLICIT]), (CT_IMAGE_STORAGE, [EXPLICIT])])
    response, _ = accepted(negotiate(rq, STORAGE_POLICY))
    assert [c.result for c in response.presentation_contexts] == [0, 0]
    only_ct = replace(STORAGE_POLICY, storage_classes=frozenset({CT_IMAGE_STORAGE}))
    response, _ = accepted(negotiate(rq, only_ct))
    assert [c.result for c in response.presentation_contexts] == [3, 0]


def test_a_registered_class_of_another_service_is_not_taken_as_storage() -> None:
    worklist = "1.2.840.10008.5.1.4.31"  # Modality Worklist Information Model - FIND
    rq = request(contexts=[(worklist, [IMPLICIT]), (VERIFICATION, [IMPLICIT])])
    response, _ = accepted(negotiate(rq, STORAGE_POLICY))
    assert [c.result for c in response.presentation_contexts] == [3, 0]


@pytest.mark.parametrize("positive", [True, False])
def test_an_identity_response_is_sent_only_when_asked_for(positive: bool) -> None:
    identity = UserIdentityRQ(1, b"alice", positive_response_requested=positive)
    rq = request(user_identity=identity)
    response, _ = accepted(negotiate(rq, POLICY, identity_response=b"ok"))
    expected = UserIdentityAC(b"ok") if positive else None
    assert response.user_information.user_identity_ac == expected


def test_bad_requests_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="more than 128"):
        request(contexts=[(f"1.2.3.{i}", [IMPLICIT]) for i in range(129)])
    with pytest.raises(ValueError, match="async_window must be 1 to 65535"):
        request(async_window=0)


def test_the_storage_sop_classes_are_known() -> None:
    # Taken from pydicom's registry; a pydicom that moved it would fail at
    # import, never leave this list empty.
    assert CT_IMAGE_STORAGE in STORAGE_SOP_CLASSES
    assert len(STORAGE_SOP_CLASSES) > 100
    assert not any("Commitment" in UID(uid).name for uid in STORAGE_SOP_CLASSES)


def test_the_same_request_and_answer_are_made_once_and_shared() -> None:
    # A client that associates again and again builds one request object,
    # an acceptor answers it once, and the requestor agrees once: all frozen.
    first = request(contexts=[(VERIFICATION, [IMPLICIT])])
    again = request(contexts=((VERIFICATION, (IMPLICIT,)),))
    assert again is first
    assert first.encode() is first.encode()
    other = request(contexts=((VERIFICATION, (EXPLICIT,)),))
    assert other is not first and other.presentation_contexts[0].transfer_syntaxes == (EXPLICIT,)
    answer = negotiate(first, POLICY)
    assert not isinstance(answer, AAssociateRJ)
    assert negotiate(first, POLICY) is answer
    # Another policy, or another identity response, is asked afresh.
    narrower = replace(POLICY, supported={CT_IMAGE_STORAGE: (IMPLICIT,)})
    assert isinstance(negotiate(first, narrower), AAssociateRJ)
    assert negotiate(first, POLICY, identity_response=b"ok") is not answer
    # A policy that asks a callable each time is never answered from memory.
    asked: list[str] = []

    def allowing(uid: str, scp: bool) -> bool:
        asked.append(uid)
        return True

    allow = replace(POLICY, allow=allowing)
    negotiate(first, allow)
    negotiate(first, allow)
    assert asked == [VERIFICATION, VERIFICATION]
    response, agreement = answer
    assert requestor_agreement(first, response) is requestor_agreement(first, response)
    assert requestor_agreement(first, response, 1) is not requestor_agreement(first, response)
    assert requestor_agreement(first, response).contexts == agreement.contexts


def test_credentials_are_not_kept_in_the_negotiation_memos() -> None:
    from adicom import negotiation
    from adicom.pdu import pdus

    identity = UserIdentityRQ(2, b"alice", b"s3cret-pass", positive_response_requested=True)
    negotiation._ANSWERS.clear()
    negotiation._AGREEMENTS.clear()
    first = request(user_identity=identity)
    answer = negotiate(first, POLICY, identity_response=b"server-token")
    assert not isinstance(answer, AAssociateRJ)
    # Answered each time, never from memory: neither the passcode nor the
    # server's response outlives the association in the memo.
    assert not negotiation._ANSWERS
    plain = request()
    assert negotiate(plain, POLICY, identity_response=b"server-token") is not None
    assert not negotiation._ANSWERS  # an identity response alone is a credential too
    response, _ = answer
    assert response.user_information.user_identity_ac == UserIdentityAC(b"server-token")
    requestor_agreement(first, response)
    assert not negotiation._AGREEMENTS
    # An identity request answered with no server response (none asked
    # for): its passcode is not kept either.
    assert not isinstance(negotiate(first, POLICY), AAssociateRJ)
    assert not negotiation._ANSWERS
    # Nor in the requests build_request keeps, nor in the encodings kept.
    negotiation._REQUESTS.clear()
    pdus._ENCODED.clear()
    assert request(user_identity=identity) is not request(user_identity=identity)
    assert not negotiation._REQUESTS
    response.encode()
    first.encode()
    assert not pdus._ENCODED
    # Without credentials all are kept as before.
    plain_answer = negotiate(plain, POLICY)
    assert not isinstance(plain_answer, AAssociateRJ)
    requestor_agreement(plain, plain_answer[0])
    assert len(negotiation._ANSWERS) == len(negotiation._AGREEMENTS) == 1
    assert request() is request() and len(negotiation._REQUESTS) == 1
    plain.encode()
    assert len(pdus._ENCODED) == 1
