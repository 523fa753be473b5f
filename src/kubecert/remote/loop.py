"""The one asyncio event loop that drives every SSH connection of the process, and its error type.

The loop runs in a daemon thread, started on first use (and again in a forked child). The
synchronous API of :mod:`kubecert.remote.ssh` and :mod:`kubecert.remote.sftpfs` submits coroutines
to it with :func:`call` and waits with a timeout, so many connections can be used at once from a
thread pool. Both modules import this one; neither imports the other at import time except
``ssh`` -> ``sftpfs``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from typing import Any, Coroutine, Optional, TypeVar

from ..errors import KubecertError

T = TypeVar("T")

DEFAULT_OP_TIMEOUT = 120.0  # one SFTP operation (a file read or write) on a live connection


class TransportError(KubecertError):
    """A node cannot be reached or trusted over SSH: connect, host key, authentication, lost link."""


_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None
_thread: Optional[threading.Thread] = None
_pid = 0


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop driving every connection of this process (started on first use)."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _pid != os.getpid() or _thread is None or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="kubecert-ssh", daemon=True)
            thread.start()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


def started_here() -> bool:
    """Whether this process (not a parent it was forked from) has started the loop."""
    return _loop is not None and _pid == os.getpid()


def call(coro: Coroutine[Any, Any, T], timeout: Optional[float], what: str) -> T:
    """Run ``coro`` on the shared loop and wait for it; past ``timeout`` it is cancelled and a
    :class:`TransportError` naming ``what`` is raised."""
    loop = event_loop()
    if threading.current_thread() is _thread:
        coro.close()
        raise RuntimeError("kubecert.remote: blocking call from the SSH event loop thread")
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        if fut.done():  # the coroutine's own timeout, not ours
            raise
        fut.cancel()
        raise TransportError(f"{what}: no answer within {timeout:.0f}s") from None
    except concurrent.futures.CancelledError:
        raise TransportError(f"{what}: cancelled (connection closing)") from None


def reason(exc: BaseException) -> str:
    """The short cause of an asyncssh or OS error, for a one-line message (never data from a node:
    asyncssh's reasons and strerror texts name the problem only)."""
    why = getattr(exc, "reason", None)
    if isinstance(why, str) and why:
        return why
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
