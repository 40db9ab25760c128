"""``adicom.sync.DicomClient``: the DicomClient API for code that is not async.

Scripts, a plain Python or IPython terminal, a cron job: each call runs its
own event loop (:func:`asyncio.run`) for as long as the operation takes and
closes it before returning. As everywhere in adicom there is no thread and
no executor: the calling thread runs the loop, so a call blocks it, and
Ctrl-C cancels the operation on the wire (C-CANCEL, A-ABORT, the socket
closed) before ``KeyboardInterrupt`` reaches the caller.

That is also why a call is refused inside a running event loop (an async
function, a Jupyter notebook cell, a FastAPI handler): it would stall every
other task of that loop. :class:`RunningLoopError` says so; use
:class:`adicom.DicomClient` with ``await`` there (notebooks take top-level
``await``).

The methods are made from :class:`adicom.DicomClient`'s own (same
parameters, same docstrings, same results and exceptions), so the two
cannot drift apart; ``tests/test_sync.py`` checks that every public method
of the async client is here. ``association=`` and ``pool=`` are refused:
an association belongs to the loop that opened it, and each call here has a
loop of its own.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, TypeVar

from adicom.dicomclient import DicomClient as AsyncDicomClient
from adicom.settings import DicomSettings

__all__ = ["DicomClient", "RunningLoopError"]

P = ParamSpec("P")
R = TypeVar("R")


class RunningLoopError(RuntimeError):
    """A call of :class:`adicom.sync.DicomClient` was made inside a running event loop.

    Blocking there would stall every task of the loop; use
    :class:`adicom.DicomClient` and ``await`` its methods instead.
    """


def _refuse_running_loop(name: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # no loop in this thread: ours may run
    raise RunningLoopError(
        f"adicom.sync.DicomClient.{name}() was called inside a running event loop, "
        f"which it would block; use adicom.DicomClient with await: "
        f"'await client.{name}(...)' (in a notebook, top-level await works)"
    )


def _blocking(
    method: Callable[Concatenate[AsyncDicomClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[DicomClient, P], R]:
    """A blocking method that runs ``method`` of the wrapped async client in a loop of its own."""
    name = method.__name__

    def call(self: DicomClient, /, *args: P.args, **kwargs: P.kwargs) -> R:
        # Checked before the coroutine exists: refusing must not leave one
        # behind, never awaited.
        _refuse_running_loop(name)
        if kwargs.get("association") is not None:
            raise ValueError(
                f"adicom.sync.DicomClient.{name}(): association= belongs to the event "
                "loop that opened it, and each call here runs a loop of its own; "
                "leave it out (a new association is opened), or use adicom.DicomClient"
            )
        return asyncio.run(method(self.async_client, *args, **kwargs))

    functools.update_wrapper(call, method)
    call.__module__ = __name__
    return call


def _rewrapping(
    method: Callable[Concatenate[AsyncDicomClient, P], AsyncDicomClient],
) -> Callable[Concatenate[DicomClient, P], DicomClient]:
    """A method of the async client that returns a client (a configured copy), for the facade.

    The result is wrapped too, so ``client.with_x(...)`` stays blocking.
    """

    def call(self: DicomClient, /, *args: P.args, **kwargs: P.kwargs) -> DicomClient:
        return DicomClient.from_client(method(self.async_client, *args, **kwargs))

    functools.update_wrapper(call, method)
    call.__module__ = __name__
    return call


def _same_parameters(
    factory: Callable[P, object],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, P], None]]:
    """Give an ``__init__`` taking ``*args, **kwargs`` the parameters of ``factory``.

    For type checkers and :func:`inspect.signature`, so the constructor
    follows :class:`adicom.DicomClient`'s without a copy of its parameters.
    """

    def decorate(init: Callable[..., None]) -> Callable[Concatenate[Any, P], None]:
        init.__wrapped__ = factory.__init__  # type: ignore[attr-defined]
        return init

    return decorate


def _usable(client: AsyncDicomClient) -> AsyncDicomClient:
    """``client``, if a loop per call can serve it."""
    if client.pool is not None:
        raise ValueError(
            "adicom.sync.DicomClient: pool= keeps associations open between calls on "
            "the event loop that opened them, and each call here runs a loop of its "
            "own; leave pool out (each call opens and releases its association), or "
            "use adicom.DicomClient with the pool"
        )
    return client


class DicomClient:
    """A blocking DICOM client: :class:`adicom.DicomClient`'s methods, without ``await``.

    Takes the parameters of :class:`adicom.DicomClient` (``calling_aet``,
    ``max_pdu``, timeouts, TLS, ``retry``...) and wraps one; each method
    runs that client's coroutine in an event loop of its own and returns its
    result. Raises :class:`RunningLoopError` when called inside a running
    event loop, and ValueError for ``pool=`` (a pool's associations belong
    to one loop).
    """

    @_same_parameters(AsyncDicomClient)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._client = _usable(AsyncDicomClient(*args, **kwargs))

    @classmethod
    def from_client(cls, client: AsyncDicomClient) -> DicomClient:
        """Wrap an :class:`adicom.DicomClient` you configured; calls go to it.

        Raises ValueError if it has a ``pool``, which this client cannot use.
        """
        wrapper = cls.__new__(cls)
        wrapper._client = _usable(client)
        return wrapper

    @classmethod
    def from_settings(cls, settings: DicomSettings | None = None) -> DicomClient:
        """A client configured from ``ADICOM_*`` environment variables.

        As :meth:`adicom.DicomClient.from_settings`.
        """
        return cls.from_client(AsyncDicomClient.from_settings(settings))

    @property
    def async_client(self) -> AsyncDicomClient:
        """The :class:`adicom.DicomClient` doing the work (its settings can be changed)."""
        return self._client

    def __repr__(self) -> str:
        return f"adicom.sync.DicomClient(calling_aet={self._client.calling_aet!r})"

    # One line per method of adicom.DicomClient, for type checkers and
    # readers; _complete() below makes any that is missing at run time, and
    # tests/test_sync.py fails until it has its line here.
    echo = _blocking(AsyncDicomClient.echo)
    find_patients = _blocking(AsyncDicomClient.find_patients)
    find_studies = _blocking(AsyncDicomClient.find_studies)
    find_series = _blocking(AsyncDicomClient.find_series)
    find_images = _blocking(AsyncDicomClient.find_images)
    find_worklist = _blocking(AsyncDicomClient.find_worklist)
    get_study = _blocking(AsyncDicomClient.get_study)
    get_series = _blocking(AsyncDicomClient.get_series)
    get_image = _blocking(AsyncDicomClient.get_image)
    get_study_to_memory = _blocking(AsyncDicomClient.get_study_to_memory)
    get_series_to_memory = _blocking(AsyncDicomClient.get_series_to_memory)
    move_study = _blocking(AsyncDicomClient.move_study)
    move_series = _blocking(AsyncDicomClient.move_series)
    move_image = _blocking(AsyncDicomClient.move_image)
    store = _blocking(AsyncDicomClient.store)
    store_many = _blocking(AsyncDicomClient.store_many)
    get_studies = _blocking(AsyncDicomClient.get_studies)
    move_studies = _blocking(AsyncDicomClient.move_studies)
    commit = _blocking(AsyncDicomClient.commit)
    with_retry = _rewrapping(AsyncDicomClient.with_retry)


def _complete(facade: type[DicomClient], source: type[Any] = AsyncDicomClient) -> frozenset[str]:
    """Add to ``facade`` each public method ``source`` has and it lacks; return their names.

    So a method added to the async client is never missing here at run
    time, even before it has its typed line in the class body: a coroutine
    method becomes blocking, a method or class method returning a client
    returns the facade wrapping it, any other method is passed through.
    """
    added = set()
    for name in dir(source):
        if name.startswith("_") or name in vars(facade):
            continue
        found = inspect.getattr_static(source, name)
        if isinstance(found, classmethod):
            wrapper: object = classmethod(_passed_through(getattr(source, name), source))
        elif inspect.iscoroutinefunction(found):
            wrapper = _blocking(found)
        elif inspect.isfunction(found):
            wrapper = _passed_through(found, source)
        else:
            continue  # not a method (a property, a constant): nothing to run
        setattr(facade, name, wrapper)
        added.add(name)
    return frozenset(added)


def _passed_through(function: Callable[..., Any], source: type[Any]) -> Callable[..., Any]:
    """A plain method (or a bound class method) of ``source``, its client results wrapped."""
    bound = inspect.ismethod(function)  # a class method, bound to source

    def call(owner: Any, /, *args: Any, **kwargs: Any) -> Any:
        if bound:
            result = function(*args, **kwargs)
        else:
            result = function(owner.async_client, *args, **kwargs)
        if isinstance(result, source):
            facade: Any = owner if isinstance(owner, type) else type(owner)
            return facade.from_client(result)
        return result

    functools.update_wrapper(call, function)
    call.__module__ = __name__
    return call


# The methods made at run time for want of a line in the class body (tests/test_sync.py
# wants none).
_GENERATED = _complete(DicomClient)
