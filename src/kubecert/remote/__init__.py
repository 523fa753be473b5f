"""Agentless operation across a cluster: kubecert on the operator's machine, only sshd on the nodes.

``ssh`` is the transport (:class:`~kubecert.remote.ssh.Connection`: host-key checking, commands,
one shared event loop for every connection) and ``sftpfs`` a node's file system over SFTP
(:class:`~kubecert.remote.sftpfs.SFTPFS`, the semantics of ``LocalFS``). Importing this package is
cheap: asyncssh is loaded only when one of these names is first used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sftpfs import SFTPFS
    from .ssh import Connection, TransportError

__all__ = ["SFTPFS", "Connection", "TransportError"]

_WHERE = {"Connection": "ssh", "TransportError": "ssh", "SFTPFS": "sftpfs"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
