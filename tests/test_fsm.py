"""Tests for adicom.fsm against PS3.8 9.2 (Tables 9-1 to 9-10).

The table is checked cell by cell against a second encoding written here in
the standard's own layout, so that a slip in either copy shows up.
"""

from __future__ import annotations

import pickle
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adicom.errors import DicomError
from adicom.fsm import (
    ACTIONS,
    TABLE,
    Action,
    ActionSpec,
    Effect,
    Event,
    InvalidTransition,
    State,
    StateMachine,
    Transition,
)

# PS3.8 Table 9-10, one row per event, columns Sta1..Sta13, "" for an empty cell.
#                 Sta1    Sta2    Sta3    Sta4    Sta5    Sta6    Sta7
#                 Sta8    Sta9    Sta10   Sta11   Sta12   Sta13
STANDARD: dict[str, list[str]] = {
    "Evt1": ["AE-1", "", "", "", "", "", "",
             "", "", "", "", "", ""],
    "Evt2": ["", "", "", "AE-2", "", "", "",
             "", "", "", "", "", ""],
    "Evt3": ["", "AA-1", "AA-8", "", "AE-3", "AA-8", "AA-8",
             "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"],
    "Evt4": ["", "AA-1", "AA-8", "", "AE-4", "AA-8", "AA-8",
             "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"],
    "Evt5": ["AE-5", "", "", "", "", "", "",
             "", "", "", "", "", ""],
    "Evt6": ["", "AE-6", "AA-8", "", "AA-8", "AA-8", "AA-8",
             "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-7"],
    "Evt7": ["", "", "AE-7", "", "", "", "",
             "", "", "", "", "", ""],
    "Evt8": ["", "", "AE-8", "", "", "", "",
             "", "", "", "", "", ""],
    "Evt9": ["", "", "", "", "", "DT-1", "",
             "AR-7", "", "", "", "", ""],
    "Evt10": ["", "AA-1", "AA-8", "", "AA-8", "DT-2", "AR-6",
              "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"],
    "Evt11": ["", "", "", "", "", "AR-1", "",
              "", "", "", "", "", ""],
    "Evt12": ["", "AA-1", "AA-8", "", "AA-8", "AR-2", "AR-8",
              "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-6"],
    "Evt13": ["", "AA-1", "AA-8", "", "AA-8", "AA-8", "AR-3",
              "AA-8", "AA-8", "AR-10", "AR-3", "AA-8", "AA-6"],
    "Evt14": ["", "", "", "", "", "", "",
              "AR-4", "AR-9", "", "", "AR-4", ""],
    "Evt15": ["", "", "AA-1", "AA-2", "AA-1", "AA-1", "AA-1",
              "AA-1", "AA-1", "AA-1", "AA-1", "AA-1", ""],
    "Evt16": ["", "AA-2", "AA-3", "", "AA-3", "AA-3", "AA-3",
              "AA-3", "AA-3", "AA-3", "AA-3", "AA-3", "AA-2"],
    "Evt17": ["", "AA-5", "AA-4", "AA-4", "AA-4", "AA-4", "AA-4",
              "AA-4", "AA-4", "AA-4", "AA-4", "AA-4", "AR-5"],
    "Evt18": ["", "AA-2", "", "", "", "", "",
              "", "", "", "", "", "AA-2"],
    "Evt19": ["", "AA-1", "AA-8", "", "AA-8", "AA-8", "AA-8",
              "AA-8", "AA-8", "AA-8", "AA-8", "AA-8", "AA-7"],
}  # fmt: skip

# PS3.8 Tables 9-6 to 9-9: the next state of each action (None: decided at run time).
NEXT: dict[str, int | None] = {
    "AE-1": 4, "AE-2": 5, "AE-3": 6, "AE-4": 1, "AE-5": 2, "AE-6": None, "AE-7": 6, "AE-8": 13,
    "DT-1": 6, "DT-2": 6,
    "AR-1": 7, "AR-2": 8, "AR-3": 1, "AR-4": 13, "AR-5": 1, "AR-6": 7, "AR-7": 8,
    "AR-8": None, "AR-9": 11, "AR-10": 12,
    "AA-1": 13, "AA-2": 1, "AA-3": 1, "AA-4": 1, "AA-5": 1, "AA-6": 13, "AA-7": 13, "AA-8": 13,
}  # fmt: skip

E = Effect
# The same tables, as effects in the order the standard lists them.
EFFECTS: dict[str, tuple[Effect, ...]] = {
    "AE-1": (E.CONNECT_TRANSPORT,),
    "AE-2": (E.SEND_ASSOCIATE_RQ,),
    "AE-3": (E.CONFIRM_ACCEPT,),
    "AE-4": (E.CONFIRM_REJECT, E.CLOSE_TRANSPORT),
    "AE-5": (E.TRANSPORT_RESPONSE, E.START_ARTIM),
    "AE-6": (E.STOP_ARTIM, E.INDICATE_ASSOCIATE),
    "AE-7": (E.SEND_ASSOCIATE_AC,),
    "AE-8": (E.SEND_ASSOCIATE_RJ, E.START_ARTIM),
    "DT-1": (E.SEND_P_DATA,),
    "DT-2": (E.INDICATE_DATA,),
    "AR-1": (E.SEND_RELEASE_RQ,),
    "AR-2": (E.INDICATE_RELEASE,),
    "AR-3": (E.CONFIRM_RELEASE, E.CLOSE_TRANSPORT),
    "AR-4": (E.SEND_RELEASE_RP, E.START_ARTIM),
    "AR-5": (E.STOP_ARTIM,),
    "AR-6": (E.INDICATE_DATA,),
    "AR-7": (E.SEND_P_DATA,),
    "AR-8": (E.INDICATE_RELEASE,),
    "AR-9": (E.SEND_RELEASE_RP,),
    "AR-10": (E.CONFIRM_RELEASE,),
    "AA-1": (E.SEND_ABORT, E.START_ARTIM),
    "AA-2": (E.STOP_ARTIM, E.CLOSE_TRANSPORT),
    "AA-3": (E.INDICATE_ABORT, E.CLOSE_TRANSPORT),
    "AA-4": (E.INDICATE_P_ABORT,),
    "AA-5": (E.STOP_ARTIM,),
    "AA-6": (E.IGNORE,),
    "AA-7": (E.SEND_ABORT,),
    "AA-8": (E.SEND_ABORT_PROVIDER, E.INDICATE_P_ABORT, E.START_ARTIM),
}

ALL_PAIRS = [(s, e) for s in State for e in Event]
# States in which PS3.8 has ARTIM running (it follows from Tables 9-6 to 9-10).
ARTIM_STATES = {State.STA2, State.STA13}


def cell(state: State, event: Event) -> str:
    return STANDARD[f"Evt{event.value}"][state.value - 1]


def drive(sm: StateMachine, *events: Event, acceptable: bool = True) -> list[Transition]:
    return [sm.step(e, acceptable=acceptable) for e in events]


def at(state_path: list[Event], *, requestor: bool) -> StateMachine:
    sm = StateMachine(requestor=requestor)
    drive(sm, *state_path)
    return sm


# Shortest event paths from Sta1 to every state, for both roles where the role matters.
V = Event
PATHS: dict[State, tuple[bool, list[Event]]] = {
    State.STA1: (True, []),
    State.STA2: (False, [V.EVT5]),
    State.STA3: (False, [V.EVT5, V.EVT6]),
    State.STA4: (True, [V.EVT1]),
    State.STA5: (True, [V.EVT1, V.EVT2]),
    State.STA6: (True, [V.EVT1, V.EVT2, V.EVT3]),
    State.STA7: (True, [V.EVT1, V.EVT2, V.EVT3, V.EVT11]),
    State.STA8: (True, [V.EVT1, V.EVT2, V.EVT3, V.EVT12]),
    State.STA9: (True, [V.EVT1, V.EVT2, V.EVT3, V.EVT11, V.EVT12]),
    State.STA10: (False, [V.EVT5, V.EVT6, V.EVT7, V.EVT11, V.EVT12]),
    State.STA11: (True, [V.EVT1, V.EVT2, V.EVT3, V.EVT11, V.EVT12, V.EVT14]),
    State.STA12: (False, [V.EVT5, V.EVT6, V.EVT7, V.EVT11, V.EVT12, V.EVT13]),
    State.STA13: (True, [V.EVT1, V.EVT2, V.EVT3, V.EVT15]),
}


def machine_in(state: State) -> StateMachine:
    requestor, path = PATHS[state]
    sm = at(path, requestor=requestor)
    assert sm.state is state
    return sm


# --- the table, cell by cell -------------------------------------------------------------


def test_enums_follow_the_standard() -> None:
    assert [s.label for s in State] == [f"Sta{i}" for i in range(1, 14)]
    assert [e.label for e in Event] == [f"Evt{i}" for i in range(1, 20)]
    assert sorted(STANDARD, key=lambda k: int(k[3:])) == [e.label for e in Event]
    assert all(len(row) == 13 for row in STANDARD.values())
    assert {a.value for a in Action} == set(NEXT) == set(EFFECTS)
    assert len(Action) == 28
    assert State.STA1.description == "Idle"
    assert Event.EVT9.description == "P-DATA request primitive"


def test_table_has_exactly_the_standards_cells() -> None:
    expected = {(s, e) for s, e in ALL_PAIRS if cell(s, e)}
    assert set(TABLE) == expected
    assert len(TABLE) == 123


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS, ids=lambda x: x.label)
def test_cell(state: State, event: Event) -> None:
    want = cell(state, event)
    got = TABLE.get((state, event))
    assert (got.value if got else "") == want
    sm = machine_in(state)
    if not want:
        with pytest.raises(InvalidTransition) as info:
            sm.step(event)
        assert info.value.state is state
        assert info.value.event is event
        assert sm.state is state
        return
    before_artim = sm.artim_running
    t = sm.step(event)
    assert t.action.value == want
    assert t.old is state
    assert t.new is sm.state
    nxt = NEXT[want]
    if nxt is not None:
        assert t.new == State(nxt)
        assert t.effects == EFFECTS[want]
    if Effect.START_ARTIM in t.effects:
        assert sm.artim_running
    elif Effect.STOP_ARTIM in t.effects or t.new is State.STA1:
        assert not sm.artim_running
    else:
        assert sm.artim_running == before_artim


@pytest.mark.parametrize("action", list(Action), ids=lambda a: a.value)
def test_action_spec(action: Action) -> None:
    spec = ACTIONS[action]
    assert isinstance(spec, ActionSpec)
    nxt = NEXT[action.value]
    assert spec.next_state == (None if nxt is None else State(nxt))
    assert spec.effects == EFFECTS[action.value]
    assert spec.text


def test_every_action_is_used() -> None:
    assert set(TABLE.values()) == set(Action)


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        TABLE[State.STA1, Event.EVT9] = Action.DT_1  # type: ignore[index]
    with pytest.raises(TypeError):
        ACTIONS[Action.AE_1] = ACTIONS[Action.AE_2]  # type: ignore[index]


# --- conditional actions -----------------------------------------------------------------


def test_ae6_acceptable() -> None:
    sm = machine_in(State.STA2)
    assert sm.artim_running
    t = sm.step(Event.EVT6, acceptable=True)
    assert t == Transition(
        Action.AE_6, (Effect.STOP_ARTIM, Effect.INDICATE_ASSOCIATE), State.STA2, State.STA3
    )
    assert not sm.artim_running


def test_ae6_not_acceptable() -> None:
    sm = machine_in(State.STA2)
    t = sm.step(Event.EVT6, acceptable=False)
    assert t == Transition(
        Action.AE_6,
        (Effect.STOP_ARTIM, Effect.SEND_ASSOCIATE_RJ, Effect.START_ARTIM),
        State.STA2,
        State.STA13,
    )
    assert sm.artim_running


def test_acceptable_only_matters_for_ae6() -> None:
    sm = machine_in(State.STA6)
    assert sm.step(Event.EVT9, acceptable=False).new is State.STA6


@pytest.mark.parametrize(("requestor", "new"), [(True, State.STA9), (False, State.STA10)])
def test_ar8_depends_on_role(requestor: bool, new: State) -> None:
    sm = StateMachine(requestor=requestor)
    if requestor:
        drive(sm, V.EVT1, V.EVT2, V.EVT3, V.EVT11)
    else:
        drive(sm, V.EVT5, V.EVT6, V.EVT7, V.EVT11)
    assert sm.state is State.STA7
    t = sm.step(Event.EVT12)
    assert t == Transition(Action.AR_8, (Effect.INDICATE_RELEASE,), State.STA7, new)


# --- InvalidTransition -------------------------------------------------------------------


def test_invalid_transition_message_and_tree() -> None:
    sm = StateMachine(requestor=True)
    with pytest.raises(InvalidTransition) as info:
        sm.step(Event.EVT9)
    assert str(info.value) == "Evt9 (P-DATA request primitive) is not valid in Sta1 (Idle)"
    assert isinstance(info.value, DicomError)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.state, again.event, str(again)) == (State.STA1, Event.EVT9, str(info.value))


def test_invalid_transition_keeps_artim() -> None:
    sm = machine_in(State.STA13)
    assert sm.artim_running
    with pytest.raises(InvalidTransition):
        sm.step(Event.EVT15)
    assert sm.state is State.STA13
    assert sm.artim_running


def test_no_pdu_events_without_a_transport() -> None:
    pdu_events = [V.EVT3, V.EVT4, V.EVT6, V.EVT10, V.EVT12, V.EVT13, V.EVT16, V.EVT19]
    for state in (State.STA1, State.STA4):
        for event in pdu_events:
            assert (state, event) not in TABLE


# --- scripted paths ----------------------------------------------------------------------


def actions(ts: list[Transition]) -> list[str]:
    return [t.action.value for t in ts]


def test_requestor_association_and_release() -> None:
    sm = StateMachine(requestor=True)
    ts = drive(sm, V.EVT1, V.EVT2, V.EVT3, V.EVT9, V.EVT10, V.EVT11, V.EVT10, V.EVT13)
    assert actions(ts) == ["AE-1", "AE-2", "AE-3", "DT-1", "DT-2", "AR-1", "AR-6", "AR-3"]
    assert [t.new.value for t in ts] == [4, 5, 6, 6, 6, 7, 7, 1]
    assert ts[-1].effects == (Effect.CONFIRM_RELEASE, Effect.CLOSE_TRANSPORT)
    assert not sm.artim_running


def test_requestor_rejected() -> None:
    sm = StateMachine(requestor=True)
    ts = drive(sm, V.EVT1, V.EVT2, V.EVT4)
    assert actions(ts) == ["AE-1", "AE-2", "AE-4"]
    assert sm.state is State.STA1


def test_acceptor_association_and_release() -> None:
    sm = StateMachine(requestor=False)
    ts = drive(sm, V.EVT5)
    assert sm.artim_running
    ts += drive(sm, V.EVT6, V.EVT7, V.EVT10, V.EVT9, V.EVT12, V.EVT9, V.EVT14)
    assert actions(ts) == ["AE-5", "AE-6", "AE-7", "DT-2", "DT-1", "AR-2", "AR-7", "AR-4"]
    assert sm.state is State.STA13
    assert sm.artim_running
    t = sm.step(V.EVT17)
    assert t.action is Action.AR_5
    assert t.new is State.STA1
    assert not sm.artim_running


def test_acceptor_user_rejects() -> None:
    sm = StateMachine(requestor=False)
    ts = drive(sm, V.EVT5, V.EVT6, V.EVT8)
    assert actions(ts) == ["AE-5", "AE-6", "AE-8"]
    assert sm.state is State.STA13
    assert sm.artim_running
    # The requestor may still send something before it closes: ignored (AA-6).
    assert sm.step(V.EVT10).effects == (Effect.IGNORE,)
    t = sm.step(V.EVT17)
    assert (t.action, t.new) == (Action.AR_5, State.STA1)


def test_release_collision_requestor_side() -> None:
    sm = StateMachine(requestor=True)
    drive(sm, V.EVT1, V.EVT2, V.EVT3)
    ts = drive(sm, V.EVT11, V.EVT12, V.EVT14, V.EVT13)
    assert actions(ts) == ["AR-1", "AR-8", "AR-9", "AR-3"]
    assert [t.new for t in ts] == [State.STA7, State.STA9, State.STA11, State.STA1]
    assert not sm.artim_running


def test_release_collision_acceptor_side() -> None:
    sm = StateMachine(requestor=False)
    drive(sm, V.EVT5, V.EVT6, V.EVT7)
    ts = drive(sm, V.EVT11, V.EVT12, V.EVT13, V.EVT14, V.EVT17)
    assert actions(ts) == ["AR-1", "AR-8", "AR-10", "AR-4", "AR-5"]
    assert [t.new for t in ts] == [State.STA7, State.STA10, State.STA12, State.STA13, State.STA1]
    assert not sm.artim_running


def test_release_collision_is_not_symmetric() -> None:
    # Sta9 must answer before it can accept the peer's answer; Sta10 must not answer first.
    assert (State.STA9, Event.EVT13) in TABLE and TABLE[State.STA9, Event.EVT13] is Action.AA_8
    assert (State.STA10, Event.EVT14) not in TABLE
    assert (State.STA11, Event.EVT14) not in TABLE


def test_artim_expires_in_sta2() -> None:
    sm = StateMachine(requestor=False)
    drive(sm, V.EVT5)
    t = sm.step(V.EVT18)
    assert t == Transition(
        Action.AA_2, (Effect.STOP_ARTIM, Effect.CLOSE_TRANSPORT), State.STA2, State.STA1
    )
    assert not sm.artim_running


def test_artim_expires_in_sta13() -> None:
    sm = StateMachine(requestor=False)
    drive(sm, V.EVT5, V.EVT6, acceptable=False)
    assert sm.state is State.STA13
    assert sm.artim_running
    t = sm.step(V.EVT18)
    assert t.action is Action.AA_2
    assert t.new is State.STA1
    assert not sm.artim_running


def test_artim_not_valid_elsewhere() -> None:
    for state in State:
        if state not in ARTIM_STATES:
            assert (state, Event.EVT18) not in TABLE


def test_user_abort_then_peer_closes() -> None:
    sm = machine_in(State.STA6)
    t = sm.step(V.EVT15)
    assert t.effects == (Effect.SEND_ABORT, Effect.START_ARTIM)
    assert t.new is State.STA13
    t = sm.step(V.EVT17)
    assert (t.action, t.new) == (Action.AR_5, State.STA1)


def test_user_abort_then_artim_expires() -> None:
    sm = machine_in(State.STA6)
    drive(sm, V.EVT15)
    assert sm.step(V.EVT18).effects == (Effect.STOP_ARTIM, Effect.CLOSE_TRANSPORT)


def test_user_abort_while_connecting() -> None:
    sm = machine_in(State.STA4)
    t = sm.step(V.EVT15)
    assert t.action is Action.AA_2
    assert sm.state is State.STA1


def test_peer_aborts_during_association() -> None:
    sm = machine_in(State.STA6)
    t = sm.step(V.EVT16)
    assert t.effects == (Effect.INDICATE_ABORT, Effect.CLOSE_TRANSPORT)
    assert sm.state is State.STA1


def test_peer_aborts_before_requesting() -> None:
    sm = machine_in(State.STA2)
    t = sm.step(V.EVT16)
    assert t.action is Action.AA_2
    assert Effect.INDICATE_ABORT not in t.effects


def test_invalid_pdu_during_association() -> None:
    sm = machine_in(State.STA6)
    t = sm.step(V.EVT19)
    assert t.effects == (Effect.SEND_ABORT_PROVIDER, Effect.INDICATE_P_ABORT, Effect.START_ARTIM)
    assert sm.state is State.STA13
    # Anything but a new A-ASSOCIATE-RQ or garbage is dropped while we wait for the close.
    assert sm.step(V.EVT10).action is Action.AA_6
    assert sm.step(V.EVT19).action is Action.AA_7
    t = sm.step(V.EVT16)
    assert (t.action, t.new) == (Action.AA_2, State.STA1)


def test_unexpected_pdu_before_request_aborts_as_user() -> None:
    sm = machine_in(State.STA2)
    t = sm.step(V.EVT10)
    assert t.action is Action.AA_1
    assert t.effects == (Effect.SEND_ABORT, Effect.START_ARTIM)
    assert sm.artim_running


def test_transport_lost() -> None:
    for state in State:
        if state in (State.STA1,):
            continue
        sm = machine_in(state)
        t = sm.step(V.EVT17)
        assert sm.state is State.STA1
        assert not sm.artim_running
        assert t.action.value == {State.STA2: "AA-5", State.STA13: "AR-5"}.get(state, "AA-4")


# --- two machines wired together ---------------------------------------------------------

# What the peer sees when one side carries out an effect.
WIRE: dict[Effect, Event] = {
    E.SEND_ASSOCIATE_RQ: V.EVT6,
    E.SEND_ASSOCIATE_AC: V.EVT3,
    E.SEND_ASSOCIATE_RJ: V.EVT4,
    E.SEND_P_DATA: V.EVT10,
    E.SEND_RELEASE_RQ: V.EVT12,
    E.SEND_RELEASE_RP: V.EVT13,
    E.SEND_ABORT: V.EVT16,
    E.SEND_ABORT_PROVIDER: V.EVT16,
    E.CLOSE_TRANSPORT: V.EVT17,
}


class Pair:
    """A requestor and an acceptor joined by an in-memory, ordered transport."""

    def __init__(self) -> None:
        self.rq = StateMachine(requestor=True)
        self.ac = StateMachine(requestor=False)
        self.queue: deque[tuple[StateMachine, Event]] = deque()
        self.closed = False
        self.indications: list[tuple[str, Effect]] = []

    def states(self) -> tuple[State, State]:
        return (self.rq.state, self.ac.state)

    def peer(self, sm: StateMachine) -> StateMachine:
        return self.ac if sm is self.rq else self.rq

    def local(self, sm: StateMachine, event: Event) -> None:
        self.apply(sm, sm.step(event))

    def apply(self, sm: StateMachine, t: Transition) -> None:
        name = "rq" if sm is self.rq else "ac"
        for effect in t.effects:
            if effect is E.CONNECT_TRANSPORT:
                self.queue.append((self.ac, V.EVT5))
                self.queue.append((sm, V.EVT2))
            elif effect is E.CLOSE_TRANSPORT:
                if not self.closed:
                    self.closed = True
                    self.queue.append((self.peer(sm), V.EVT17))
            elif effect in WIRE and not self.closed:
                self.queue.append((self.peer(sm), WIRE[effect]))
            elif effect.name.startswith(("INDICATE", "CONFIRM")):
                self.indications.append((name, effect))

    def run(self) -> None:
        while self.queue:
            sm, event = self.queue.popleft()
            self.apply(sm, sm.step(event))


def test_pair_association_and_release() -> None:
    pair = Pair()
    pair.local(pair.rq, V.EVT1)
    pair.run()
    assert pair.states() == (State.STA5, State.STA3)
    pair.local(pair.ac, V.EVT7)
    pair.run()
    assert pair.states() == (State.STA6, State.STA6)
    pair.local(pair.rq, V.EVT11)
    pair.run()
    assert pair.states() == (State.STA7, State.STA8)
    pair.local(pair.ac, V.EVT14)
    pair.run()
    assert pair.states() == (State.STA1, State.STA1)
    assert not pair.rq.artim_running and not pair.ac.artim_running


def test_pair_release_collision_ends_in_sta1() -> None:
    pair = Pair()
    pair.local(pair.rq, V.EVT1)
    pair.run()
    pair.local(pair.ac, V.EVT7)
    pair.run()
    # Both users ask for release before either request arrives.
    pair.local(pair.rq, V.EVT11)
    pair.local(pair.ac, V.EVT11)
    pair.run()
    assert pair.states() == (State.STA9, State.STA10)
    pair.local(pair.rq, V.EVT14)  # PS3.8 7.2.2: the requestor answers first
    pair.run()
    assert pair.states() == (State.STA11, State.STA12)
    pair.local(pair.ac, V.EVT14)
    pair.run()
    assert pair.states() == (State.STA1, State.STA1)
    # Each user had one release indication and one release confirmation.
    for side in ("rq", "ac"):
        got = [e for s, e in pair.indications if s == side and "RELEASE" in e.name]
        assert got == [E.INDICATE_RELEASE, E.CONFIRM_RELEASE]


def test_pair_abort() -> None:
    pair = Pair()
    pair.local(pair.rq, V.EVT1)
    pair.run()
    pair.local(pair.ac, V.EVT7)
    pair.run()
    pair.local(pair.ac, V.EVT15)
    pair.run()
    # The aborting side waits in Sta13 (ARTIM running) until the peer closes the transport.
    assert pair.states() == (State.STA1, State.STA1)
    assert not pair.ac.artim_running
    assert ("rq", E.INDICATE_ABORT) in pair.indications


# --- random event sequences --------------------------------------------------------------


def check_step(sm: StateMachine, event: Event, acceptable: bool) -> None:
    before, artim_before = sm.state, sm.artim_running
    try:
        t = sm.step(event, acceptable=acceptable)
    except InvalidTransition as exc:
        assert (before, event) not in TABLE
        assert (exc.state, exc.event) == (before, event)
        assert sm.state is before
        assert sm.artim_running == artim_before
        return
    assert isinstance(sm.state, State)
    assert t.action is TABLE[before, event]
    assert (t.old, t.new) == (before, sm.state)
    assert t.effects
    # ARTIM runs exactly while we wait on a transport with no association (Sta2, Sta13).
    assert sm.artim_running == (sm.state in ARTIM_STATES)
    # Entering Sta13 always arms ARTIM, so a silent peer cannot hold us there.
    if t.new is State.STA13 and t.old is not State.STA13:
        assert Effect.START_ARTIM in t.effects
    # Reaching Sta1 closes the transport, unless the transport is what went away.
    if t.new is State.STA1 and event is not Event.EVT17:
        assert Effect.CLOSE_TRANSPORT in t.effects
    # The collision states belong to one role each.
    if sm.state in (State.STA9, State.STA11):
        assert sm.requestor
    if sm.state in (State.STA10, State.STA12):
        assert not sm.requestor


@settings(max_examples=300)
@given(
    requestor=st.booleans(),
    steps=st.lists(st.tuples(st.sampled_from(Event), st.booleans()), max_size=80),
)
def test_random_events(requestor: bool, steps: list[tuple[Event, bool]]) -> None:
    sm = StateMachine(requestor=requestor)
    for event, acceptable in steps:
        check_step(sm, event, acceptable)


@settings(max_examples=300)
@given(requestor=st.booleans(), data=st.data())
def test_random_valid_walks(requestor: bool, data: st.DataObject) -> None:
    # Only events the table allows, so the walk reaches the deep (release, abort) states.
    sm = StateMachine(requestor=requestor)
    for _ in range(data.draw(st.integers(0, 60))):
        valid = sorted(e for s, e in TABLE if s is sm.state)
        event = data.draw(st.sampled_from(valid))
        check_step(sm, event, data.draw(st.booleans()))


@given(state=st.sampled_from(State), event=st.sampled_from(Event))
def test_pairs_sampled(state: State, event: Event) -> None:
    sm = machine_in(state)
    check_step(sm, event, True)
