"""The DICOM Upper Layer state machine of PS3.8 9.2, written down as data.

Everything that decides what the upper layer may do next lives in this file.
The protocol object (``adicom.protocol``) turns bytes, user calls and timer
expiries into events, hands them to :class:`StateMachine`, and carries out the
:class:`Effect` values it gets back, in order. This module does no I/O, owns no
clock and knows nothing about PDU contents.

How the table is used
---------------------
PS3.8 9.2 describes the upper layer as a finite state machine. Its thirteen
states are listed in Tables 9-1 to 9-5 (9.2.1), its twenty-eight actions in
Tables 9-6 to 9-9 (9.2.2), and Table 9-10 (9.2.3) crosses nineteen events (the
rows) with the states (the columns). We number the events Evt1..Evt19 in the
order of those rows, as every reader of the standard does. A cell holds the
action to run, and every action names the state that follows it. An empty cell
means the event cannot happen in that state: for a local primitive that is a
bug in the caller, for a PDU it can only happen where there is no transport
connection yet (Sta1, Sta4). Stepping on an empty cell raises
:class:`InvalidTransition` and leaves the machine as it was.

The one table serves both roles: the association-requestor walks
Sta1 -> Sta4 -> Sta5 -> Sta6, the acceptor Sta1 -> Sta2 -> Sta3 -> Sta6. Only
two actions depend on something outside the table. AE-6 asks whether the
service provider can accept the A-ASSOCIATE-RQ at all (``acceptable``); if it
cannot, it answers with A-ASSOCIATE-RJ itself and the user never hears of the
request. AR-8 asks which side of the association we are (``requestor``).

Many cells of the table are error handling, and they are easy to get wrong
when written from memory. A PDU that makes no sense in Sta2 (before any
A-ASSOCIATE-RQ) gets AA-1, an abort with *service-user* source and no
indication, since no user has heard of the association yet; in Sta3 and Sta5
to Sta12 the same PDU gets AA-8, an abort with service-provider source plus an
A-P-ABORT indication. In Sta13 an unexpected PDU is ignored (AA-6), except an
A-ASSOCIATE-RQ or an unreadable PDU, which get an A-ABORT (AA-7). A received
A-ABORT closes the transport quietly in Sta2 and Sta13 (AA-2) and is indicated
to the user elsewhere (AA-3). A closed transport is an A-P-ABORT everywhere
(AA-4), except in Sta2, where nothing was established (AA-5), and in Sta13,
where it is the normal end (AR-5).

Release collision
-----------------
Both users may ask for release at the same moment (PS3.8 7.2.2). Each side
then sends A-RELEASE-RQ (AR-1, Sta7) and receives the other's A-RELEASE-RQ
while waiting for an A-RELEASE-RP: AR-8 gives each user an A-RELEASE
indication. The standard breaks the symmetry by role. The association-
requestor goes to Sta9 and answers first (AR-9, Sta11); the acceptor goes to
Sta10 and waits for that answer, confirms its own release on receiving it
(AR-10, Sta12), and only then answers in turn (AR-4, Sta13, with ARTIM
running). The requestor, in Sta11, receives the answer, confirms and closes
the transport (AR-3, Sta1); the acceptor sees the transport close (AR-5, Sta1).
Both users have then had an indication and a confirmation, and each has
issued one A-RELEASE response. The protocol object answers the collision
indication for its user: it must feed Evt14 in Sta9 and Sta12.

ARTIM
-----
ARTIM, the Association Request/Reject/Release timer (PS3.8 9.1.5; its use in
9.1.2 and 9.1.4), guards the two states in which we wait on the peer's
transport without an association to speak for: Sta2, where an accepted TCP
connection has not yet sent its A-ASSOCIATE-RQ (started by AE-5, stopped by
AE-6), and Sta13, where we have rejected, released or aborted and wait for
the peer to close (started by AE-6 when it rejects, AE-8, AR-4, AA-1 and
AA-8). Its expiry (Evt18) is valid only there and closes the transport
(AA-2). It follows from the table that ARTIM runs exactly in Sta2 and Sta13.
PS3.8 9.1.4 says ARTIM must not be used to time association establishment or
release as a whole; that is the job of the layer above.

Here ARTIM is data: :attr:`StateMachine.artim_running` follows the
``START_ARTIM`` and ``STOP_ARTIM`` effects, and it is cleared on reaching Sta1.
The protocol object keeps the deadline (``now`` + timeout when it sees
``START_ARTIM``), is told the time by its caller, and feeds Evt18 when the
deadline passes, in the manner of aioquic's ``get_timer`` / ``handle_timer``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from adicom.errors import DicomError

__all__ = [
    "ACTIONS",
    "TABLE",
    "Action",
    "ActionSpec",
    "Effect",
    "Event",
    "InvalidTransition",
    "State",
    "StateMachine",
    "Transition",
    "states_where",
]


class State(enum.IntEnum):
    """The thirteen states of PS3.8 Tables 9-1 to 9-5."""

    STA1 = 1  # Idle
    STA2 = 2  # Transport connection open (awaiting A-ASSOCIATE-RQ PDU)
    STA3 = 3  # Awaiting local A-ASSOCIATE response primitive
    STA4 = 4  # Awaiting transport connection opening to complete
    STA5 = 5  # Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU
    STA6 = 6  # Association established and ready for data transfer
    STA7 = 7  # Awaiting A-RELEASE-RP PDU
    STA8 = 8  # Awaiting local A-RELEASE response primitive
    STA9 = 9  # Release collision requestor side; awaiting local A-RELEASE response
    STA10 = 10  # Release collision acceptor side; awaiting A-RELEASE-RP PDU
    STA11 = 11  # Release collision requestor side; awaiting A-RELEASE-RP PDU
    STA12 = 12  # Release collision acceptor side; awaiting local A-RELEASE response
    STA13 = 13  # Awaiting transport connection close indication

    @property
    def label(self) -> str:
        """The standard's name of the state, e.g. ``"Sta6"``."""
        return f"Sta{self.value}"

    @property
    def description(self) -> str:
        """The standard's definition of the state (PS3.8 Tables 9-1 to 9-5)."""
        return _STATE_TEXT[self]


class Event(enum.IntEnum):
    """The nineteen events of PS3.8 Table 9-10, numbered in the order of its rows."""

    EVT1 = 1  # A-ASSOCIATE request primitive (local user)
    EVT2 = 2  # Transport connection confirmation (local transport service)
    EVT3 = 3  # A-ASSOCIATE-AC PDU received
    EVT4 = 4  # A-ASSOCIATE-RJ PDU received
    EVT5 = 5  # Transport connection indication (local transport service)
    EVT6 = 6  # A-ASSOCIATE-RQ PDU received
    EVT7 = 7  # A-ASSOCIATE response primitive (accept)
    EVT8 = 8  # A-ASSOCIATE response primitive (reject)
    EVT9 = 9  # P-DATA request primitive
    EVT10 = 10  # P-DATA-TF PDU received
    EVT11 = 11  # A-RELEASE request primitive
    EVT12 = 12  # A-RELEASE-RQ PDU received
    EVT13 = 13  # A-RELEASE-RP PDU received
    EVT14 = 14  # A-RELEASE response primitive
    EVT15 = 15  # A-ABORT request primitive
    EVT16 = 16  # A-ABORT PDU received
    EVT17 = 17  # Transport connection closed indication
    EVT18 = 18  # ARTIM timer expired
    EVT19 = 19  # Unrecognized or invalid PDU received

    @property
    def label(self) -> str:
        """The standard's name of the event, e.g. ``"Evt9"``."""
        return f"Evt{self.value}"

    @property
    def description(self) -> str:
        """The event as the rows of PS3.8 Table 9-10 name it."""
        return _EVENT_TEXT[self]


_STATE_TEXT: Final[Mapping[State, str]] = MappingProxyType(
    {
        State.STA1: "Idle",
        State.STA2: "Transport connection open (Awaiting A-ASSOCIATE-RQ PDU)",
        State.STA3: "Awaiting local A-ASSOCIATE response primitive (from local user)",
        State.STA4: (
            "Awaiting transport connection opening to complete (from local transport service)"
        ),
        State.STA5: "Awaiting A-ASSOCIATE-AC or A-ASSOCIATE-RJ PDU",
        State.STA6: "Association established and ready for data transfer",
        State.STA7: "Awaiting A-RELEASE-RP PDU",
        State.STA8: "Awaiting local A-RELEASE response primitive (from local user)",
        State.STA9: (
            "Release collision requestor side; awaiting A-RELEASE response (from local user)"
        ),
        State.STA10: "Release collision acceptor side; awaiting A-RELEASE-RP PDU",
        State.STA11: "Release collision requestor side; awaiting A-RELEASE-RP PDU",
        State.STA12: (
            "Release collision acceptor side; "
            "awaiting A-RELEASE response primitive (from local user)"
        ),
        State.STA13: (
            "Awaiting Transport Connection Close Indication (Association no longer exists)"
        ),
    }
)

_EVENT_TEXT: Final[Mapping[Event, str]] = MappingProxyType(
    {
        Event.EVT1: "A-ASSOCIATE request primitive",
        Event.EVT2: "Transport Conn. Confirm (local transport service)",
        Event.EVT3: "A-ASSOCIATE-AC PDU (received on transport connection)",
        Event.EVT4: "A-ASSOCIATE-RJ PDU (received on transport connection)",
        Event.EVT5: "Transport Connection Indication (local transport service)",
        Event.EVT6: "A-ASSOCIATE-RQ PDU (received on transport connection)",
        Event.EVT7: "A-ASSOCIATE response primitive (accept)",
        Event.EVT8: "A-ASSOCIATE response primitive (reject)",
        Event.EVT9: "P-DATA request primitive",
        Event.EVT10: "P-DATA-TF PDU",
        Event.EVT11: "A-RELEASE request primitive",
        Event.EVT12: "A-RELEASE-RQ PDU (received on open transport connection)",
        Event.EVT13: "A-RELEASE-RP PDU (received on transport connection)",
        Event.EVT14: "A-RELEASE response primitive",
        Event.EVT15: "A-ABORT request primitive",
        Event.EVT16: "A-ABORT PDU (received on open transport connection)",
        Event.EVT17: "Transport connection closed indication (local transport service)",
        Event.EVT18: "ARTIM timer expired (Association reject/release timer)",
        Event.EVT19: "Unrecognized or invalid PDU received",
    }
)


class Action(enum.Enum):
    """The twenty-eight actions of PS3.8 Tables 9-6 to 9-9; the value is the standard's name."""

    AE_1 = "AE-1"
    AE_2 = "AE-2"
    AE_3 = "AE-3"
    AE_4 = "AE-4"
    AE_5 = "AE-5"
    AE_6 = "AE-6"
    AE_7 = "AE-7"
    AE_8 = "AE-8"
    DT_1 = "DT-1"
    DT_2 = "DT-2"
    AR_1 = "AR-1"
    AR_2 = "AR-2"
    AR_3 = "AR-3"
    AR_4 = "AR-4"
    AR_5 = "AR-5"
    AR_6 = "AR-6"
    AR_7 = "AR-7"
    AR_8 = "AR-8"
    AR_9 = "AR-9"
    AR_10 = "AR-10"
    AA_1 = "AA-1"
    AA_2 = "AA-2"
    AA_3 = "AA-3"
    AA_4 = "AA-4"
    AA_5 = "AA-5"
    AA_6 = "AA-6"
    AA_7 = "AA-7"
    AA_8 = "AA-8"


class Effect(enum.Enum):
    """One thing the protocol object must do; an action is a sequence of these.

    "Send" effects write a PDU, "indicate" and "confirm" effects hand an event
    to the local user, the others work the transport and the ARTIM timer.
    """

    CONNECT_TRANSPORT = "connect transport"  # AE-1: TRANSPORT CONNECT request
    TRANSPORT_RESPONSE = "transport response"  # AE-5: accept the incoming connection
    SEND_ASSOCIATE_RQ = "send A-ASSOCIATE-RQ"  # AE-2
    SEND_ASSOCIATE_AC = "send A-ASSOCIATE-AC"  # AE-7
    SEND_ASSOCIATE_RJ = "send A-ASSOCIATE-RJ"  # AE-8, AE-6 when not acceptable
    SEND_P_DATA = "send P-DATA-TF"  # DT-1, AR-7
    SEND_RELEASE_RQ = "send A-RELEASE-RQ"  # AR-1
    SEND_RELEASE_RP = "send A-RELEASE-RP"  # AR-4, AR-9
    SEND_ABORT = "send A-ABORT"  # AA-1 (service-user source), AA-7
    SEND_ABORT_PROVIDER = "send A-ABORT (service-provider)"  # AA-8
    INDICATE_ASSOCIATE = "A-ASSOCIATE indication"  # AE-6 when acceptable
    CONFIRM_ACCEPT = "A-ASSOCIATE confirmation (accept)"  # AE-3
    CONFIRM_REJECT = "A-ASSOCIATE confirmation (reject)"  # AE-4
    INDICATE_DATA = "P-DATA indication"  # DT-2, AR-6
    INDICATE_RELEASE = "A-RELEASE indication"  # AR-2, AR-8
    CONFIRM_RELEASE = "A-RELEASE confirmation"  # AR-3, AR-10
    INDICATE_ABORT = "A-ABORT or A-P-ABORT indication"  # AA-3: the PDU's source decides
    INDICATE_P_ABORT = "A-P-ABORT indication"  # AA-4, AA-8
    START_ARTIM = "start ARTIM"  # AE-5, AE-6 (reject), AE-8, AR-4, AA-1 (or restart), AA-8
    STOP_ARTIM = "stop ARTIM"  # AE-6, AR-5, AA-2 (if running), AA-5
    CLOSE_TRANSPORT = "close transport"  # AE-4, AR-3, AA-2, AA-3
    IGNORE = "ignore PDU"  # AA-6


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """What one action of PS3.8 Tables 9-6 to 9-9 does.

    ``effects`` are to be carried out in order. ``next_state`` is None for the
    two actions whose next state is decided at run time: AE-6 (whether the
    provider can accept the request) and AR-8 (requestor or acceptor). For
    AE-6, ``effects`` are those of the acceptable case; :meth:`StateMachine.step`
    gives the other.
    """

    effects: tuple[Effect, ...]
    next_state: State | None
    text: str


_E = Effect
_S = State

# PS3.8 9.2.2, Tables 9-6 to 9-9. The texts say what the standard says, in our words.
ACTIONS: Final[Mapping[Action, ActionSpec]] = MappingProxyType(
    {
        # Table 9-6: association establishment.
        Action.AE_1: ActionSpec(
            (_E.CONNECT_TRANSPORT,),
            _S.STA4,
            "Ask the local transport service to open a connection to the peer.",
        ),
        Action.AE_2: ActionSpec(
            (_E.SEND_ASSOCIATE_RQ,),
            _S.STA5,
            "Send the A-ASSOCIATE-RQ PDU.",
        ),
        Action.AE_3: ActionSpec(
            (_E.CONFIRM_ACCEPT,),
            _S.STA6,
            "Tell the local user the association was accepted (A-ASSOCIATE confirmation).",
        ),
        Action.AE_4: ActionSpec(
            (_E.CONFIRM_REJECT, _E.CLOSE_TRANSPORT),
            _S.STA1,
            "Tell the local user the association was rejected, then close the transport.",
        ),
        Action.AE_5: ActionSpec(
            (_E.TRANSPORT_RESPONSE, _E.START_ARTIM),
            _S.STA2,
            "Accept the incoming transport connection and start ARTIM.",
        ),
        Action.AE_6: ActionSpec(
            (_E.STOP_ARTIM, _E.INDICATE_ASSOCIATE),
            None,
            "Stop ARTIM. If the provider can accept the request, pass it to the local "
            "user as an A-ASSOCIATE indication (next Sta3); if not, answer with an "
            "A-ASSOCIATE-RJ PDU and start ARTIM (next Sta13).",
        ),
        Action.AE_7: ActionSpec(
            (_E.SEND_ASSOCIATE_AC,),
            _S.STA6,
            "Send the A-ASSOCIATE-AC PDU.",
        ),
        Action.AE_8: ActionSpec(
            (_E.SEND_ASSOCIATE_RJ, _E.START_ARTIM),
            _S.STA13,
            "Send the A-ASSOCIATE-RJ PDU and start ARTIM.",
        ),
        # Table 9-7: data transfer.
        Action.DT_1: ActionSpec(
            (_E.SEND_P_DATA,),
            _S.STA6,
            "Send a P-DATA-TF PDU.",
        ),
        Action.DT_2: ActionSpec(
            (_E.INDICATE_DATA,),
            _S.STA6,
            "Pass the received data to the local user (P-DATA indication).",
        ),
        # Table 9-8: association release.
        Action.AR_1: ActionSpec(
            (_E.SEND_RELEASE_RQ,),
            _S.STA7,
            "Send the A-RELEASE-RQ PDU.",
        ),
        Action.AR_2: ActionSpec(
            (_E.INDICATE_RELEASE,),
            _S.STA8,
            "Tell the local user the peer asks for release (A-RELEASE indication).",
        ),
        Action.AR_3: ActionSpec(
            (_E.CONFIRM_RELEASE, _E.CLOSE_TRANSPORT),
            _S.STA1,
            "Tell the local user the release is complete, then close the transport.",
        ),
        Action.AR_4: ActionSpec(
            (_E.SEND_RELEASE_RP, _E.START_ARTIM),
            _S.STA13,
            "Send the A-RELEASE-RP PDU and start ARTIM.",
        ),
        Action.AR_5: ActionSpec(
            (_E.STOP_ARTIM,),
            _S.STA1,
            "Stop ARTIM.",
        ),
        Action.AR_6: ActionSpec(
            (_E.INDICATE_DATA,),
            _S.STA7,
            "Pass data that arrived while we wait for A-RELEASE-RP to the local user.",
        ),
        Action.AR_7: ActionSpec(
            (_E.SEND_P_DATA,),
            _S.STA8,
            "Send a P-DATA-TF PDU before answering the peer's release request.",
        ),
        Action.AR_8: ActionSpec(
            (_E.INDICATE_RELEASE,),
            None,
            "Release collision: tell the local user the peer asks for release too; "
            "the requestor goes to Sta9, the acceptor to Sta10.",
        ),
        Action.AR_9: ActionSpec(
            (_E.SEND_RELEASE_RP,),
            _S.STA11,
            "Send the A-RELEASE-RP PDU (collision, requestor side).",
        ),
        Action.AR_10: ActionSpec(
            (_E.CONFIRM_RELEASE,),
            _S.STA12,
            "Tell the local user its release is confirmed (collision, acceptor side).",
        ),
        # Table 9-9: association abort.
        Action.AA_1: ActionSpec(
            (_E.SEND_ABORT, _E.START_ARTIM),
            _S.STA13,
            "Send an A-ABORT PDU with service-user source; start ARTIM, or restart it "
            "if it is running.",
        ),
        Action.AA_2: ActionSpec(
            (_E.STOP_ARTIM, _E.CLOSE_TRANSPORT),
            _S.STA1,
            "Stop ARTIM if it is running and close the transport.",
        ),
        Action.AA_3: ActionSpec(
            (_E.INDICATE_ABORT, _E.CLOSE_TRANSPORT),
            _S.STA1,
            "Tell the local user of the abort (A-ABORT if the peer's user aborted, "
            "A-P-ABORT if its provider did) and close the transport.",
        ),
        Action.AA_4: ActionSpec(
            (_E.INDICATE_P_ABORT,),
            _S.STA1,
            "Tell the local user the provider aborted the association (A-P-ABORT).",
        ),
        Action.AA_5: ActionSpec(
            (_E.STOP_ARTIM,),
            _S.STA1,
            "Stop ARTIM.",
        ),
        Action.AA_6: ActionSpec(
            (_E.IGNORE,),
            _S.STA13,
            "Drop the PDU.",
        ),
        Action.AA_7: ActionSpec(
            (_E.SEND_ABORT,),
            _S.STA13,
            "Send an A-ABORT PDU.",
        ),
        Action.AA_8: ActionSpec(
            (_E.SEND_ABORT_PROVIDER, _E.INDICATE_P_ABORT, _E.START_ARTIM),
            _S.STA13,
            "Send an A-ABORT PDU with service-provider source, tell the local user "
            "(A-P-ABORT indication) and start ARTIM.",
        ),
    }
)

_A = Action
_V = Event

# PS3.8 9.2.3, Table 9-10: exactly its non-empty cells, one line each, by row (event).
TABLE: Final[Mapping[tuple[State, Event], Action]] = MappingProxyType(
    {
        # Evt1: A-ASSOCIATE request primitive (local user)
        (_S.STA1, _V.EVT1): _A.AE_1,
        # Evt2: Transport connection confirmation (local transport service)
        (_S.STA4, _V.EVT2): _A.AE_2,
        # Evt3: A-ASSOCIATE-AC PDU received
        (_S.STA2, _V.EVT3): _A.AA_1,
        (_S.STA3, _V.EVT3): _A.AA_8,
        (_S.STA5, _V.EVT3): _A.AE_3,
        (_S.STA6, _V.EVT3): _A.AA_8,
        (_S.STA7, _V.EVT3): _A.AA_8,
        (_S.STA8, _V.EVT3): _A.AA_8,
        (_S.STA9, _V.EVT3): _A.AA_8,
        (_S.STA10, _V.EVT3): _A.AA_8,
        (_S.STA11, _V.EVT3): _A.AA_8,
        (_S.STA12, _V.EVT3): _A.AA_8,
        (_S.STA13, _V.EVT3): _A.AA_6,
        # Evt4: A-ASSOCIATE-RJ PDU received
        (_S.STA2, _V.EVT4): _A.AA_1,
        (_S.STA3, _V.EVT4): _A.AA_8,
        (_S.STA5, _V.EVT4): _A.AE_4,
        (_S.STA6, _V.EVT4): _A.AA_8,
        (_S.STA7, _V.EVT4): _A.AA_8,
        (_S.STA8, _V.EVT4): _A.AA_8,
        (_S.STA9, _V.EVT4): _A.AA_8,
        (_S.STA10, _V.EVT4): _A.AA_8,
        (_S.STA11, _V.EVT4): _A.AA_8,
        (_S.STA12, _V.EVT4): _A.AA_8,
        (_S.STA13, _V.EVT4): _A.AA_6,
        # Evt5: Transport connection indication (local transport service)
        (_S.STA1, _V.EVT5): _A.AE_5,
        # Evt6: A-ASSOCIATE-RQ PDU received
        (_S.STA2, _V.EVT6): _A.AE_6,
        (_S.STA3, _V.EVT6): _A.AA_8,
        (_S.STA5, _V.EVT6): _A.AA_8,
        (_S.STA6, _V.EVT6): _A.AA_8,
        (_S.STA7, _V.EVT6): _A.AA_8,
        (_S.STA8, _V.EVT6): _A.AA_8,
        (_S.STA9, _V.EVT6): _A.AA_8,
        (_S.STA10, _V.EVT6): _A.AA_8,
        (_S.STA11, _V.EVT6): _A.AA_8,
        (_S.STA12, _V.EVT6): _A.AA_8,
        (_S.STA13, _V.EVT6): _A.AA_7,
        # Evt7: A-ASSOCIATE response primitive (accept)
        (_S.STA3, _V.EVT7): _A.AE_7,
        # Evt8: A-ASSOCIATE response primitive (reject)
        (_S.STA3, _V.EVT8): _A.AE_8,
        # Evt9: P-DATA request primitive (not in Sta7: PS3.8 7.2.2)
        (_S.STA6, _V.EVT9): _A.DT_1,
        (_S.STA8, _V.EVT9): _A.AR_7,
        # Evt10: P-DATA-TF PDU received
        (_S.STA2, _V.EVT10): _A.AA_1,
        (_S.STA3, _V.EVT10): _A.AA_8,
        (_S.STA5, _V.EVT10): _A.AA_8,
        (_S.STA6, _V.EVT10): _A.DT_2,
        (_S.STA7, _V.EVT10): _A.AR_6,
        (_S.STA8, _V.EVT10): _A.AA_8,
        (_S.STA9, _V.EVT10): _A.AA_8,
        (_S.STA10, _V.EVT10): _A.AA_8,
        (_S.STA11, _V.EVT10): _A.AA_8,
        (_S.STA12, _V.EVT10): _A.AA_8,
        (_S.STA13, _V.EVT10): _A.AA_6,
        # Evt11: A-RELEASE request primitive
        (_S.STA6, _V.EVT11): _A.AR_1,
        # Evt12: A-RELEASE-RQ PDU received
        (_S.STA2, _V.EVT12): _A.AA_1,
        (_S.STA3, _V.EVT12): _A.AA_8,
        (_S.STA5, _V.EVT12): _A.AA_8,
        (_S.STA6, _V.EVT12): _A.AR_2,
        (_S.STA7, _V.EVT12): _A.AR_8,
        (_S.STA8, _V.EVT12): _A.AA_8,
        (_S.STA9, _V.EVT12): _A.AA_8,
        (_S.STA10, _V.EVT12): _A.AA_8,
        (_S.STA11, _V.EVT12): _A.AA_8,
        (_S.STA12, _V.EVT12): _A.AA_8,
        (_S.STA13, _V.EVT12): _A.AA_6,
        # Evt13: A-RELEASE-RP PDU received
        (_S.STA2, _V.EVT13): _A.AA_1,
        (_S.STA3, _V.EVT13): _A.AA_8,
        (_S.STA5, _V.EVT13): _A.AA_8,
        (_S.STA6, _V.EVT13): _A.AA_8,
        (_S.STA7, _V.EVT13): _A.AR_3,
        (_S.STA8, _V.EVT13): _A.AA_8,
        (_S.STA9, _V.EVT13): _A.AA_8,
        (_S.STA10, _V.EVT13): _A.AR_10,
        (_S.STA11, _V.EVT13): _A.AR_3,
        (_S.STA12, _V.EVT13): _A.AA_8,
        (_S.STA13, _V.EVT13): _A.AA_6,
        # Evt14: A-RELEASE response primitive
        (_S.STA8, _V.EVT14): _A.AR_4,
        (_S.STA9, _V.EVT14): _A.AR_9,
        (_S.STA12, _V.EVT14): _A.AR_4,
        # Evt15: A-ABORT request primitive
        (_S.STA3, _V.EVT15): _A.AA_1,
        (_S.STA4, _V.EVT15): _A.AA_2,
        (_S.STA5, _V.EVT15): _A.AA_1,
        (_S.STA6, _V.EVT15): _A.AA_1,
        (_S.STA7, _V.EVT15): _A.AA_1,
        (_S.STA8, _V.EVT15): _A.AA_1,
        (_S.STA9, _V.EVT15): _A.AA_1,
        (_S.STA10, _V.EVT15): _A.AA_1,
        (_S.STA11, _V.EVT15): _A.AA_1,
        (_S.STA12, _V.EVT15): _A.AA_1,
        # Evt16: A-ABORT PDU received
        (_S.STA2, _V.EVT16): _A.AA_2,
        (_S.STA3, _V.EVT16): _A.AA_3,
        (_S.STA5, _V.EVT16): _A.AA_3,
        (_S.STA6, _V.EVT16): _A.AA_3,
        (_S.STA7, _V.EVT16): _A.AA_3,
        (_S.STA8, _V.EVT16): _A.AA_3,
        (_S.STA9, _V.EVT16): _A.AA_3,
        (_S.STA10, _V.EVT16): _A.AA_3,
        (_S.STA11, _V.EVT16): _A.AA_3,
        (_S.STA12, _V.EVT16): _A.AA_3,
        (_S.STA13, _V.EVT16): _A.AA_2,
        # Evt17: Transport connection closed indication (local transport service)
        (_S.STA2, _V.EVT17): _A.AA_5,
        (_S.STA3, _V.EVT17): _A.AA_4,
        (_S.STA4, _V.EVT17): _A.AA_4,
        (_S.STA5, _V.EVT17): _A.AA_4,
        (_S.STA6, _V.EVT17): _A.AA_4,
        (_S.STA7, _V.EVT17): _A.AA_4,
        (_S.STA8, _V.EVT17): _A.AA_4,
        (_S.STA9, _V.EVT17): _A.AA_4,
        (_S.STA10, _V.EVT17): _A.AA_4,
        (_S.STA11, _V.EVT17): _A.AA_4,
        (_S.STA12, _V.EVT17): _A.AA_4,
        (_S.STA13, _V.EVT17): _A.AR_5,
        # Evt18: ARTIM timer expired
        (_S.STA2, _V.EVT18): _A.AA_2,
        (_S.STA13, _V.EVT18): _A.AA_2,
        # Evt19: Unrecognized or invalid PDU received
        (_S.STA2, _V.EVT19): _A.AA_1,
        (_S.STA3, _V.EVT19): _A.AA_8,
        (_S.STA5, _V.EVT19): _A.AA_8,
        (_S.STA6, _V.EVT19): _A.AA_8,
        (_S.STA7, _V.EVT19): _A.AA_8,
        (_S.STA8, _V.EVT19): _A.AA_8,
        (_S.STA9, _V.EVT19): _A.AA_8,
        (_S.STA10, _V.EVT19): _A.AA_8,
        (_S.STA11, _V.EVT19): _A.AA_8,
        (_S.STA12, _V.EVT19): _A.AA_8,
        (_S.STA13, _V.EVT19): _A.AA_7,
    }
)


@dataclass(frozen=True, slots=True)
class Transition:
    """The result of one step: the action taken, its effects in order, and the states."""

    action: Action
    effects: tuple[Effect, ...]
    old: State
    new: State


class InvalidTransition(DicomError):
    """The event has no cell in PS3.8 Table 9-10 for the current state.

    Raised by :meth:`StateMachine.step`, which then leaves the machine as it
    was. ``state`` and ``event`` say which cell was empty.
    """

    def __init__(self, state: State, event: Event) -> None:
        self.state = state
        self.event = event
        super().__init__(
            f"{event.label} ({event.description}) is not valid in "
            f"{state.label} ({state.description})"
        )

    def __reduce__(self) -> tuple[type[InvalidTransition], tuple[State, Event]]:
        return (type(self), (self.state, self.event))


# AE-6 when the provider cannot accept the A-ASSOCIATE-RQ (PS3.8 Table 9-6).
_AE6_REJECT: Final = (Effect.STOP_ARTIM, Effect.SEND_ASSOCIATE_RJ, Effect.START_ARTIM)


def _artim_after(effects: tuple[Effect, ...], new: State) -> bool | None:
    """ARTIM's state after ``effects`` (the last start/stop wins); None if untouched."""
    running: bool | None = None
    for effect in effects:
        if effect is Effect.START_ARTIM:
            running = True
        elif effect is Effect.STOP_ARTIM:
            running = False
    if new is State.STA1:
        running = False
    return running


def _resolve(
    state: State, event: Event, action: Action, *, acceptable: bool, requestor: bool
) -> tuple[Transition, bool | None]:
    spec = ACTIONS[action]
    effects = spec.effects
    new = spec.next_state
    if action is Action.AE_6:
        if acceptable:
            new = State.STA3
        else:
            effects, new = _AE6_REJECT, State.STA13
    elif action is Action.AR_8:
        new = State.STA9 if requestor else State.STA10
    assert new is not None
    return Transition(action, effects, state, new), _artim_after(effects, new)


# Every step, resolved once: (state, event, acceptable, requestor) -> (transition, artim).
# Transitions are immutable, so the hot path (P-DATA) is one dict look-up.
_RESOLVED: Final[Mapping[tuple[State, Event, bool, bool], tuple[Transition, bool | None]]] = (
    MappingProxyType(
        {
            (state, event, acceptable, requestor): _resolve(
                state, event, action, acceptable=acceptable, requestor=requestor
            )
            for (state, event), action in TABLE.items()
            for acceptable in (True, False)
            for requestor in (True, False)
        }
    )
)


#: _RESOLVED as nested tuples, ``_GRID[state][event][acceptable][requestor]``
#: (None where Table 9-10 has no cell): what :meth:`StateMachine.step` reads,
#: four tuple indexings (done in C for an IntEnum and a bool) in place of a
#: look-up through the read-only proxy with a key tuple made per step.
_Cells = tuple[tuple[tuple[Transition, bool | None], ...], ...]


def _cells(state: int, event: int) -> _Cells | None:
    """``_RESOLVED``'s four cells of ``(state, event)`` as [acceptable][requestor]."""
    if (state, event) not in TABLE:  # 0, a number of no state or event, is in none
        return None
    return tuple(
        tuple(
            _RESOLVED[State(state), Event(event), acceptable, requestor]
            for requestor in (False, True)
        )
        for acceptable in (False, True)
    )


_GRID: Final[tuple[tuple[_Cells | None, ...], ...]] = tuple(
    tuple(_cells(state, event) for event in range(max(Event) + 1))
    for state in range(max(State) + 1)
)


def states_where(event: Event, effects: tuple[Effect, ...]) -> frozenset[State]:
    """The states in which ``event`` does just ``effects`` and changes nothing else.

    That is, for either role and either answer of AE-6, its cell of Table
    9-10 has exactly those effects, leaves the state as it was and does not
    touch ARTIM. A caller may then skip :meth:`StateMachine.step` for
    ``event`` in those states and carry out ``effects`` itself: the protocol
    object does so for P-DATA (Evt9 in Sta6 is DT-1, in Sta8 AR-7; Evt10 in
    Sta6 is DT-2, in Sta7 AR-6), deriving its shortcuts from this table
    when it is imported, so they cannot disagree with it.
    """
    found = set()
    for state in State:
        cells = [
            _RESOLVED.get((state, event, acceptable, requestor))
            for acceptable in (True, False)
            for requestor in (True, False)
        ]
        if all(
            cell is not None
            and cell[0].effects == effects
            and cell[0].new is state
            and cell[1] is None
            for cell in cells
        ):
            found.add(state)
    return frozenset(found)


#: State.STA1, looked up once (an Enum class attribute costs a slot call on 3.11).
_STA1 = State.STA1


class StateMachine:
    """One association's upper layer state machine (PS3.8 9.2), with no I/O.

    Feed it events with :meth:`step`; carry out the returned effects in order.
    ``requestor`` says whether this side sent the A-ASSOCIATE-RQ; it only
    matters for a release collision (AR-8).
    """

    __slots__ = ("_artim_running", "_state", "requestor")

    def __init__(self, requestor: bool) -> None:
        self.requestor = requestor
        self._state = _STA1
        self._artim_running = False

    def __repr__(self) -> str:
        role = "requestor" if self.requestor else "acceptor"
        artim = ", ARTIM running" if self._artim_running else ""
        return f"<StateMachine {role} {self._state.label}{artim}>"

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def artim_running(self) -> bool:
        """Whether ARTIM is running: the protocol object should hold a deadline."""
        return self._artim_running

    def step(self, event: Event, *, acceptable: bool = True) -> Transition:
        """Apply ``event`` per PS3.8 Table 9-10 and return what to do.

        ``acceptable`` only matters for AE-6 (an A-ASSOCIATE-RQ received in
        Sta2): it says whether the service provider can accept the request.
        Raises :class:`InvalidTransition`, changing nothing, when the table has
        no cell for the current state and ``event``. ``event`` must be an
        :class:`Event` and ``acceptable`` a bool: they index the table as
        they are, unchecked (it runs for every PDU).
        """
        cells = _GRID[self._state][event]
        if cells is None:
            raise InvalidTransition(self._state, Event(event))
        transition, artim = cells[acceptable][self.requestor]
        self._state = transition.new
        if artim is not None:
            self._artim_running = artim
        return transition
