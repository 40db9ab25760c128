"""The network tests again, on uvloop (``pip install 'adicom[uvloop]'``).

adicom runs on any asyncio event loop, and ``adicom serve --loop auto``
takes uvloop when it is installed. uvloop's transports are not asyncio's:
they do not derive from ``asyncio.Transport``, pause and resume reading,
buffer writes, close and report errors in their own code, and have their
own TLS. So the suites that drive real sockets (associations, hostile
peers, the listener, TLS, the loop's turn budget, storage, query/retrieve,
write-behind, events, the pool) run here a second time with this module's
``anyio_backend``: their async tests are imported under the same names and
pytest collects them again in this module, where the fixture below makes
anyio run each on a uvloop loop. The synchronous tests are not repeated:
they use no loop, nor do the tests marked ``selector_loop_only`` (a path
of asyncio's selector loop that uvloop does not take).

``test_echo_and_release_without_threads`` is among them: on uvloop too,
adicom starts no thread.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from typing import Any

import pytest
import uvloop

import adicom

_SUITES = (
    "tests.test_association",
    "tests.test_association_timer",
    "tests.test_deadlines",
    "tests.test_hostile",
    "tests.test_listener",
    "tests.test_tls",
    "tests.test_turns",
    "tests.test_client_connect",
    "tests.test_server_negotiation",
    "tests.test_storage",
    "tests.test_qr",
    "tests.test_integrity",
    "tests.test_write_behind",
    "tests.test_events",
    "tests.test_get_sub_operations",
    "tests.test_pool",
)


def _selector_loop_only(test: object) -> bool:
    """Whether ``test`` is marked ``selector_loop_only``."""
    return any(mark.name == "selector_loop_only" for mark in getattr(test, "pytestmark", ()))


def _async_tests_and_their_fixtures(name: str) -> dict[str, Any]:
    """A suite's names, without its synchronous tests (and without its anyio_backend)."""
    names = {}
    for key, value in vars(importlib.import_module(name)).items():
        if key.startswith("test_") and not inspect.iscoroutinefunction(value):
            continue
        if _selector_loop_only(value):
            continue  # a path uvloop does not take (it has a test of its own there)
        if key in ("anyio_backend", "__name__", "__doc__", "__file__", "__spec__"):
            continue
        names[key] = value
    return names


for _suite in _SUITES:
    globals().update(_async_tests_and_their_fixtures(_suite))

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    """anyio's asyncio backend, on a uvloop loop."""
    return ("asyncio", {"use_uvloop": True})


async def test_these_tests_run_on_uvloop() -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


async def test_an_echo_on_uvloop_on_both_sides() -> None:
    # The transport adicom is handed is uvloop's, not an asyncio.Transport.
    async with adicom.Server("UV-SCP", host="127.0.0.1", port=0) as server:
        async with adicom.connect("127.0.0.1", server.port, called_ae="UV-SCP") as assoc:
            assert not isinstance(assoc._transport, asyncio.Transport)
            assert await assoc.echo() == 0x0000


def test_the_suites_are_collected_again() -> None:
    # At least the async tests of each suite are here (a suite renamed or
    # emptied would otherwise leave this module testing nothing).
    for suite in _SUITES:
        tests = [
            key
            for key, value in vars(importlib.import_module(suite)).items()
            if key.startswith("test_") and inspect.iscoroutinefunction(value)
        ]
        assert tests, f"{suite} has no async test to run on uvloop"
        left_out = {key for key in tests if key not in globals()}
        assert all(_selector_loop_only(vars(importlib.import_module(suite))[k]) for k in left_out)


def test_only_uvloops_tcp_transport_is_trusted_to_set_tcp_nodelay() -> None:
    # adicom.transport.sets_nodelay: TransportProtocol skips its own
    # setsockopt for these (test_tcp_nodelay_on_both_sides, collected here
    # from tests.test_association, checks the option on uvloop's sockets).
    import asyncio.selector_events

    import uvloop.loop

    from adicom.transport import sets_nodelay

    uv: Any = uvloop.loop
    selector: Any = asyncio.selector_events
    assert sets_nodelay(uv.TCPTransport)
    assert not sets_nodelay(uv.UnixTransport)
    assert not sets_nodelay(selector._SelectorSocketTransport)
    assert not sets_nodelay(asyncio.Transport)


async def test_uvloop_connects_to_an_ip_address_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    # adicom.client._connects_itself: given the address, uvloop connects and
    # makes the transport in its own code; no socket of ours.
    from adicom import client

    def refused(sock: object, family: int) -> None:
        raise AssertionError("uvloop connects to an IP address itself")

    async with adicom.Server("UV-SCP", host="127.0.0.1", port=0) as server:
        monkeypatch.setattr(client, "tcp_socket", refused)
        async with asyncio.timeout(10):
            async with adicom.connect("127.0.0.1", server.port, called_ae="UV-SCP") as assoc:
                assert await assoc.echo() == 0x0000


async def test_on_uvloop_other_numeric_forms_connect_through_a_socket_of_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "127.1" is not what inet_pton reads: uvloop would hand it to its
    # resolver, a thread of libuv's pool. resolve() gives its canonical
    # form; a form it did not give still connects a socket of adicom's own.
    from adicom import client

    loop: Any = asyncio.get_running_loop()
    create_connection = loop.create_connection
    hosts: list[object] = []

    async def telling(*args: Any, **kwargs: Any) -> Any:
        hosts.append(args[1] if len(args) > 1 else kwargs.get("host"))
        return await create_connection(*args, **kwargs)

    async with adicom.Server("UV-SCP", host="127.0.0.1", port=0) as server:
        monkeypatch.setattr(loop, "create_connection", telling)
        async with asyncio.timeout(10):
            async with adicom.connect("127.1", server.port, called_ae="UV-SCP") as assoc:
                assert await assoc.echo() == 0x0000
            monkeypatch.setattr(client, "resolve", lambda host, port: host)
            async with adicom.connect("127.1", server.port, called_ae="UV-SCP") as assoc:
                assert await assoc.echo() == 0x0000
    assert hosts == ["127.0.0.1", None]
