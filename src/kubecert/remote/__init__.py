"""Agentless operation across a cluster: kubecert on the operator's machine, only sshd on the nodes.

``ssh`` is the transport (:class:`~kubecert.remote.ssh.Connection`: host-key checking, commands),
``sftpfs`` a node's file system over SFTP (:class:`~kubecert.remote.sftpfs.SFTPFS`, the semantics of
``LocalFS``), ``snapshot`` the one-command read of a node's PKI that ``cluster check`` uses instead of
hundreds of SFTP requests, and ``loop`` the one asyncio event loop all connections share (with
:class:`~kubecert.remote.loop.TransportError`). Imports go ``ssh`` -> ``sftpfs`` -> ``snapshot``,
all -> ``loop``. Importing this package is cheap: asyncssh is loaded only when one of these names is
first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import TransportError
    from .sftpfs import SFTPFS
    from .ssh import Connection

__all__ = ["SFTPFS", "Connection", "TransportError"]

_WHERE = {"Connection": "ssh", "TransportError": "loop", "SFTPFS": "sftpfs"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
