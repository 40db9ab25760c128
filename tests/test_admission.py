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
