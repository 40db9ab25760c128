"""Admission's counts: per address, pending and associated, back to nothing at the end."""

from __future__ import annotations

from adicom.admission import Admission


def test_per_address_cap_and_counts_return_to_zero() -> None:
    admission = Admission(max_associations=10, max_pending=10, max_per_address=2)
    first = admission.connect("10.0.0.1")
    second = admission.connect("10.0.0.1")
    assert isinstance(first, int) and isinstance(second, int)
    refused = admission.connect("10.0.0.1")
    assert isinstance(refused, str) and "holds 2 connections" in refused
    other = admission.connect("10.0.0.2")  # another address has its own room
    assert isinstance(other, int)
    assert admission.associate()
    admission.disconnect(first, "10.0.0.1", associated=True)
    again = admission.connect("10.0.0.1")  # room again
    assert isinstance(again, int)
    for ticket, address in ((second, "10.0.0.1"), (other, "10.0.0.2"), (again, "10.0.0.1")):
        admission.disconnect(ticket, address, associated=False)
    assert (admission.pending, admission.associated) == (0, 0)
    assert admission._by_address == {}


def test_an_ended_association_waiting_for_its_close_counts_and_goes_first() -> None:
    admission = Admission(max_associations=10, max_pending=2, max_per_address=None)
    closed: list[str] = []
    ended = admission.connect("10.0.0.1")
    silent = admission.connect("10.0.0.2")
    assert isinstance(ended, int) and isinstance(silent, int)
    admission.silent(silent, lambda: closed.append("silent"))
    assert admission.associate()
    admission.closing(ended, "10.0.0.1", lambda: closed.append("ended"), associated=True)
    # Its association's place is free, the connection still counts.
    assert (admission.pending, admission.associated) == (2, 0)
    # The pending cap is full: the ended one is closed first, not the silent one.
    third = admission.connect("10.0.0.3")
    assert isinstance(third, int) and closed == ["ended"]
    for ticket, address in ((ended, "10.0.0.1"), (silent, "10.0.0.2"), (third, "10.0.0.3")):
        admission.disconnect(ticket, address, associated=False)
    assert (admission.pending, admission.associated) == (0, 0)
    assert admission._by_address == {} and not admission._closing


def test_a_full_address_closes_its_own_ended_connection_once() -> None:
    admission = Admission(max_associations=10, max_pending=None, max_per_address=1)
    closed: list[int] = []
    first = admission.connect("10.0.0.1")
    assert isinstance(first, int) and admission.associate()
    admission.closing(first, "10.0.0.1", lambda: closed.append(first), associated=True)
    second = admission.connect("10.0.0.1")  # the ended one goes, this one comes in
    assert isinstance(second, int) and closed == [first]
    # Until the first has closed, the address is full and has nothing left to close.
    refused = admission.connect("10.0.0.1")
    assert isinstance(refused, str) and "holds 2 connections" in refused
    assert isinstance(admission.connect("10.0.0.2"), int)  # others are not affected
    admission.disconnect(first, "10.0.0.1", associated=False)
    admission.disconnect(second, "10.0.0.1", associated=False)
    assert admission._by_address == {"10.0.0.2": 1}


def test_an_address_closing_its_ended_connection_takes_its_place_only() -> None:
    # The new connection takes the place of the one closed for it: no other
    # peer's connection is closed for the pending cap it still counts in.
    admission = Admission(max_associations=10, max_pending=2, max_per_address=1)
    closed: list[str] = []
    first = admission.connect("10.0.0.1")
    assert isinstance(first, int) and admission.associate()
    other = admission.connect("10.0.0.2")
    assert isinstance(other, int)
    admission.silent(other, lambda: closed.append("other, silent"))
    admission.closing(first, "10.0.0.1", lambda: closed.append("first, ended"), associated=True)
    again = admission.connect("10.0.0.1")
    assert isinstance(again, int) and closed == ["first, ended"]
    for ticket, address in ((first, "10.0.0.1"), (other, "10.0.0.2"), (again, "10.0.0.1")):
        admission.disconnect(ticket, address, associated=False)
    assert (admission.pending, admission.associated) == (0, 0) and admission._by_address == {}


def test_a_connection_closed_to_make_room_is_not_closed_again() -> None:
    admission = Admission(max_associations=10, max_pending=1, max_per_address=None)
    closed: list[str] = []
    first = admission.connect("10.0.0.1")
    assert isinstance(first, int)
    admission.silent(first, lambda: closed.append("first"))
    second = admission.connect("10.0.0.2")  # closes the silent first
    assert isinstance(second, int) and closed == ["first"]
    # The first's task ends before its socket has: it is not put up again.
    admission.closing(first, "10.0.0.1", lambda: closed.append("first again"), associated=False)
    third = admission.connect("10.0.0.3")
    assert isinstance(third, str) and closed == ["first"]
    admission.disconnect(first, "10.0.0.1", associated=False)
    admission.disconnect(second, "10.0.0.2", associated=False)
    assert admission.pending == 0 and not admission._evicted and not admission._closing
